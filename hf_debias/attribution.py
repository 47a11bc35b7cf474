"""Input attributions of a classifier's decision: LRP (zennit) where its rules cover the model, else input × gradient.

``attribute(model, images, labels=labels)`` explains the true class of each image (or ``target``, a chosen class)
and returns ``[N, C, H, W]`` attributions plus the name of the method used. The RR-ClArC authors explain with LRP
(zennit's ``EpsilonPlusFlat`` composite, BatchNorm merged into the preceding convolution, relevance 1 at the
class logit); ``method="auto"`` does the same for CNNs built from convolutions, linear layers, BatchNorm,
activations, pooling and residual additions (canonized as zennit does for ResNets: BatchNorm merged, each
addition a ``Sum`` module with the ``Norm`` rule), and falls back to input × gradient (captum) for anything else
(attention, LayerNorm, a correction that changes the forward pass), saying why once per model kind.
"""

from __future__ import annotations

import contextlib
import operator
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn

from ._validation import check_batch_size, check_choice, check_label_tensor
from .model import DebiasModel, logits_of

METHODS = ("auto", "lrp", "input_x_gradient", "gradient")
"""``attribute``'s methods: ``auto`` (LRP where it applies, else input × gradient) or one of them explicitly."""

_warned: set[tuple[str, str]] = set()


def attribute(model: nn.Module, images: torch.Tensor, *, method: str = "auto",
              target: int | torch.Tensor | None = None, labels: torch.Tensor | None = None,
              batch_size: int = 64) -> tuple[torch.Tensor, str]:
    """Attributions of ``model``'s logit for each image's class, shaped like ``images``, and the method used.

    Args:
        model: a timm / transformers classifier, any module returning logits (or a ``ModelOutput``), or an
            ``hf_debias`` wrapper (explained as it predicts: a correction that changes the forward pass, such as
            P-ClArC's projection, rules LRP out).
        images: ``[N, C, H, W]`` floating tensor, preprocessed as the model expects.
        method: ``"auto"`` (LRP if zennit's rules cover the model, else input × gradient), ``"lrp"`` (an error
            if they do not), ``"input_x_gradient"`` or ``"gradient"`` (the signed input gradient).
        target: the class to explain, one for all images (int) or one per image (``[N]`` tensor); by default
            ``labels``, the true classes.
        labels: ``[N]`` true class ids, used when ``target`` is None.
        batch_size: images per forward / backward pass.

    Returns:
        ``(attributions, method_used)``: float32 ``[N, C, H, W]`` on the CPU, and ``"lrp"``,
        ``"input_x_gradient"`` or ``"gradient"``.

    The model runs in eval mode with its parameters frozen; afterwards every module's mode, every parameter's
    ``requires_grad`` (and the BatchNorm / convolution weights LRP merges temporarily) are as before, and no
    parameter has gained a ``.grad``.
    """
    check_choice("method", method, METHODS)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if isinstance(model, DebiasModel) and model.method is None:
        raise ValueError("model is an unloaded DebiasModel; pass the model that unload() returned.")
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.dim() != 4:
        kind = f"shape {tuple(images.shape)}, dtype {images.dtype}" if isinstance(images, torch.Tensor) \
            else type(images).__name__
        raise ValueError(f"images must be a floating-point tensor shaped [N, C, H, W], got {kind}.")
    count = check_batch_size("images", images.shape[0])
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    targets = _targets(target, labels, count)

    with _attribution_mode(model):
        plan, reason = (_lrp_plan(model, images[:2]) if method in ("auto", "lrp") else (None, None))
        if method == "lrp" and plan is None:
            raise ValueError(f"method='lrp' cannot explain {type(model).__name__}: {reason}. Use method='auto' "
                             "(falls back to input × gradient) or method='input_x_gradient'.")
        if method == "auto":
            method_used = "lrp" if plan is not None else "input_x_gradient"
            if plan is None:
                _warn_once(type(model).__name__, reason)
        else:
            method_used = method
        device, dtype = _device_and_dtype(model, images)
        chunks = []
        with plan.applied() if plan is not None else contextlib.nullcontext() as lrp:
            for start in range(0, count, batch_size):
                batch = images[start:start + batch_size].to(device=device, dtype=dtype)
                batch_targets = targets[start:start + batch_size].to(device)
                chunk = lrp(batch, batch_targets) if lrp is not None else \
                    _gradient_attribution(model, batch, batch_targets, method_used)
                chunks.append(chunk.detach().float().cpu())
    return torch.cat(chunks), method_used


def _targets(target: int | torch.Tensor | None, labels: torch.Tensor | None, count: int) -> torch.Tensor:
    if target is None:
        if labels is None:
            raise ValueError("Pass labels (the true class of each image, explained by default) or target (a class "
                             "to explain); both are None.")
        return check_label_tensor("labels", labels, count).long().cpu()
    if isinstance(target, bool):
        raise ValueError(f"target must be a class id (int) or a [N] tensor of class ids, got {target!r}.")
    if isinstance(target, int):
        if target < 0:
            raise ValueError(f"target must be a class id >= 0, got {target}.")
        return torch.full((count,), target, dtype=torch.long)
    return check_label_tensor("target", target, count).long().cpu()


def _device_and_dtype(model: nn.Module, images: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters(), None)
    if parameter is None:
        return images.device, images.dtype
    return parameter.device, parameter.dtype if parameter.is_floating_point() else images.dtype


@contextlib.contextmanager
def _attribution_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode, frozen parameters, gradients on; restores every module's mode and ``requires_grad``."""
    modes = [(module, module.training) for module in model.modules()]
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    model.eval()
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        with torch.enable_grad():
            yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        for module, mode in modes:
            module.training = mode


def _class_scores(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if logits.dim() != 2:
        raise ValueError(f"The model must return logits shaped [B, num_classes], got {tuple(logits.shape)}.")
    if int(targets.max()) >= logits.shape[1]:
        raise ValueError(f"target class {int(targets.max())} is out of range: the model has {logits.shape[1]} "
                         "classes.")
    return logits.gather(1, targets[:, None]).squeeze(1)


def _gradient_attribution(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, method: str) -> torch.Tensor:
    from captum.attr import InputXGradient, Saliency

    def forward(pixels: torch.Tensor) -> torch.Tensor:
        logits = logits_of(model(pixels))
        _class_scores(logits, targets)  # validates the shape and the target range with a clear message
        return logits

    explainer = InputXGradient(forward) if method == "input_x_gradient" else Saliency(forward)
    kwargs = {} if method == "input_x_gradient" else {"abs": False}
    return explainer.attribute(images.detach().clone().requires_grad_(True), target=targets, **kwargs)


def _warn_once(model_name: str, reason: str) -> None:
    if (model_name, reason) not in _warned:
        _warned.add((model_name, reason))
        warnings.warn(f"attribute(method='auto'): LRP does not cover {model_name} ({reason}); using input × gradient.",
                      stacklevel=3)


# ---- LRP ---------------------------------------------------------------------------------------------------------

_PASS_THROUGH = (nn.Identity, nn.Flatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_SHAPE_METHODS = {"flatten", "view", "reshape", "size", "contiguous", "relu", "squeeze", "unsqueeze"}
_SHAPE_FUNCTIONS = {torch.flatten, torch.relu, nn.functional.relu, torch.squeeze, torch.unsqueeze, operator.getitem,
                    getattr, torch.reshape}
_ADDITIONS = {operator.add, operator.iadd, torch.add}


def _covered_module(module: nn.Module) -> bool:
    from zennit import types

    if isinstance(module, nn.MultiheadAttention):  # listed among zennit's activations, but not one
        return False
    return isinstance(module, (types.Linear, types.BatchNorm, types.Activation, types.AvgPool, types.MaxPool,
                               _PASS_THROUGH))


@dataclass
class _LRPPlan:
    """A canonized copy of the model's graph: residual additions as zennit ``Sum`` modules, and the
    (linear layer, BatchNorm) pairs to merge while explaining."""

    graph: nn.Module
    merges: list[tuple[nn.Module, nn.Module]]

    @contextlib.contextmanager
    def applied(self) -> Iterator:
        from zennit.canonizers import SequentialMergeBatchNorm
        from zennit.composites import EpsilonPlusFlat

        merged, inplace = [], []
        try:
            for linear, batch_norm in self.merges:
                canonizer = SequentialMergeBatchNorm()  # its register() merges one given pair
                canonizer.register([linear], batch_norm)
                merged.append(canonizer)
            for module in self.graph.modules():  # zennit's hooks cannot follow in-place activations
                if getattr(module, "inplace", False) is True:
                    module.inplace = False
                    inplace.append(module)
            with EpsilonPlusFlat().context(self.graph) as hooked:
                yield lambda images, targets: self._relevance(hooked, images, targets)
        finally:
            for module in inplace:
                module.inplace = True
            for canonizer in reversed(merged):
                canonizer.remove()

    @staticmethod
    def _relevance(hooked: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        images = images.detach().clone().requires_grad_(True)
        logits = logits_of(hooked(images))
        _class_scores(logits, targets)
        start = torch.zeros_like(logits).scatter_(1, targets[:, None], 1.0)  # relevance 1 at the class, as the authors
        (relevance,) = torch.autograd.grad(logits, images, grad_outputs=start)
        return relevance


def _lrp_plan(model: nn.Module, probe: torch.Tensor) -> tuple[_LRPPlan | None, str | None]:
    """The LRP plan for ``model``, or None and the reason zennit's rules do not cover it."""
    network = model
    if isinstance(model, DebiasModel):
        if model.method.alters_forward:
            return None, (f"the {model.debias_config.debias_method} correction changes the forward pass at "
                          f"{model.method.layer.spec!r}, and no LRP rule covers that change")
        network = model.get_base_model()
    for name, module in network.named_modules():
        own = [key for key, _ in module.named_parameters(recurse=False)]
        if own and not _covered_module(module):
            where = f"{name} ({type(module).__name__})" if name else f"the model itself ({', '.join(own)})"
            return None, f"{where} holds parameters outside any layer that zennit's EpsilonPlusFlat has a rule for"
    try:
        with _hooks_hidden(network):
            graph = torch.fx.symbolic_trace(network)
    except Exception as error:  # noqa: BLE001 - any tracing failure means: not a plain CNN graph
        return None, f"torch.fx cannot trace it to check its layers ({type(error).__name__}: {str(error)[:120]})"
    reason = _canonize(graph)
    if reason is not None:
        return None, reason
    merges, reason = _batch_norm_merges(graph)
    if reason is not None:
        return None, reason
    with torch.no_grad():
        probe = probe.to(*_device_and_dtype(network, probe))
        expected, got = logits_of(network(probe)), logits_of(graph(probe))
    if expected.shape != got.shape or not torch.allclose(expected, got, rtol=1e-4, atol=1e-5):
        return None, "its canonized graph does not reproduce its logits"
    return _LRPPlan(graph, merges), None


@contextlib.contextmanager
def _hooks_hidden(network: nn.Module) -> Iterator[None]:
    """Hide forward hooks while tracing (hf_debias's own layer hooks cannot take fx proxies); the traced graph still
    calls every leaf module, hooks included, and must reproduce the logits."""
    saved = [(module, module._forward_hooks, module._forward_pre_hooks) for module in network.modules()]
    try:
        for module, _, _ in saved:
            module._forward_hooks, module._forward_pre_hooks = type(module._forward_hooks)(), \
                type(module._forward_pre_hooks)()
        yield
    finally:
        for module, hooks, pre_hooks in saved:
            module._forward_hooks, module._forward_pre_hooks = hooks, pre_hooks


def _canonize(graph) -> str | None:
    """Check every operation of the traced ``graph`` against the rules; turn residual additions into ``Sum``s."""
    from zennit.layer import Sum

    modules = dict(graph.named_modules())
    additions = []
    for node in graph.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.op == "get_attr":
            return f"it uses the tensor {node.target!r} outside a layer, which no LRP rule covers"
        if node.op == "call_module":
            module = modules[node.target]
            if not _covered_module(module):
                return f"{node.target} ({type(module).__name__}) has no LRP rule in zennit's EpsilonPlusFlat"
            continue
        target = node.target
        is_addition = target in _ADDITIONS if node.op == "call_function" else target in ("add", "add_", "__add__")
        if is_addition:
            operands = list(node.args) + list(node.kwargs.values())
            if len(operands) != 2 or not all(isinstance(arg, torch.fx.Node) for arg in operands):
                return f"the operation {node.name} ({_op_name(target)}) has no LRP rule"
            additions.append((node, operands))
        elif (node.op == "call_function" and target not in _SHAPE_FUNCTIONS) or \
                (node.op == "call_method" and target not in _SHAPE_METHODS):
            return f"the operation {node.name} ({_op_name(target)}) has no LRP rule"
    for index, (node, operands) in enumerate(additions):  # as zennit's ResNet canonizer: stack, then Sum
        name = f"lrp_sum_{index}"
        graph.add_submodule(name, Sum(dim=-1))
        with graph.graph.inserting_before(node):
            stacked = graph.graph.call_function(torch.stack, args=(operands,), kwargs={"dim": -1})
            summed = graph.graph.call_module(name, args=(stacked,))
        node.replace_all_uses_with(summed)
        graph.graph.erase_node(node)
    graph.recompile()
    return None


def _op_name(target: object) -> str:
    return getattr(target, "__name__", str(target))


def _batch_norm_merges(graph) -> tuple[list[tuple[nn.Module, nn.Module]], str | None]:
    """Each BatchNorm with the linear layer it directly follows (which nothing else reads), as the authors' canonizers
    merge them; a BatchNorm elsewhere has no rule that keeps its shift."""
    from zennit import types

    modules = dict(graph.named_modules())
    uses: dict[str, int] = {}
    for node in graph.graph.nodes:
        if node.op == "call_module":
            uses[node.target] = uses.get(node.target, 0) + 1
    merges = []
    for node in graph.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], types.BatchNorm):
            continue
        batch_norm = modules[node.target]
        source = node.args[0] if node.args else None
        linear = modules.get(source.target) if isinstance(source, torch.fx.Node) and source.op == "call_module" \
            else None
        if linear is None or not isinstance(linear, (types.ConvolutionStandard, nn.Linear)) or len(source.users) != 1 \
                or uses[source.target] != 1 or uses[node.target] != 1:
            return [], f"the BatchNorm {node.target} does not directly follow a convolution it can be merged into"
        if batch_norm.weight is None or batch_norm.running_mean is None:
            return [], f"the BatchNorm {node.target} has no affine weights or running statistics to merge"
        merges.append((linear, batch_norm))
    return merges, None
