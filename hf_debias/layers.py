"""Address layers by module name on any ``nn.Module`` and list the candidates with their output shapes.

Names are the ones ``model.named_modules()`` yields. Wrapping prefixes added by the ecosystem are optional in
both directions: ``layer3`` finds ``timm_model.layer3`` on a transformers ``TimmWrapperForImageClassification``,
``module.layer3`` under DDP, ``_orig_mod.layer3`` after ``torch.compile``, ``base_model.model.layer3`` in
a PEFT model and ``model.layer3`` in a ``DebiasModel``, and a prefixed name also resolves on the plain model.

A name may end in ``:input`` to mean the module's *input* rather than its output; the default bottleneck is
the input of the classifier head (the pooled pre-logits features), which every classifier has.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn

WRAPPER_PREFIXES = ("module", "_orig_mod", "timm_model", "base_model.model", "_fsdp_wrapped_module",
                    "_checkpoint_wrapped_module", "model")
INPUT_SUFFIX = ":input"


@dataclass(frozen=True)
class LayerRef:
    """A resolved layer: its canonical module name, the module, and whether its input or output is meant."""

    name: str
    module: nn.Module
    on_input: bool = False

    @property
    def spec(self) -> str:
        """The name as a user writes it (``name`` or ``name:input``)."""
        return self.name + (INPUT_SUFFIX if self.on_input else "")


def _strip_wrappers(name: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix + "."):
                name, stripped = name[len(prefix) + 1:], True
    return name


def resolve_layer(model: nn.Module, layer: str | None) -> LayerRef:
    """Find ``layer`` in ``model``; ``None`` means the input of the classifier head.

    Raises:
        ValueError: the name matches no module; the message lists the closest valid names.
    """
    if layer is None:
        name, module = find_classifier(model)
        return LayerRef(name, module, on_input=True)
    on_input = isinstance(layer, str) and layer.endswith(INPUT_SUFFIX)
    wanted = layer[: -len(INPUT_SUFFIX)] if on_input else layer
    if not isinstance(wanted, str) or not wanted:
        raise ValueError(f"layer must be a module name such as 'layer3' or 'head:input', got {layer!r}.")
    modules = dict(model.named_modules())
    if wanted in modules:
        return LayerRef(wanted, modules[wanted], on_input)
    matches = [name for name in modules if name and _strip_wrappers(name) == _strip_wrappers(wanted)]
    if len(matches) == 1:
        return LayerRef(matches[0], modules[matches[0]], on_input)
    names = [name for name in modules if name]
    close = difflib.get_close_matches(wanted, names, n=5, cutoff=0.5) or [
        name for name in names if _strip_wrappers(name) == _strip_wrappers(name).split(".")[0]
    ][:8]
    if len(matches) > 1:
        raise ValueError(f"Layer {wanted!r} is ambiguous in {type(model).__name__}: it matches {matches}.")
    raise ValueError(
        f"Layer {wanted!r} not found in {type(model).__name__}. Closest valid layers: {close}. "
        "List them all with hf_debias.list_layers(model) or `hf-debias layers MODEL`."
    )


def find_classifier(model: nn.Module) -> tuple[str, nn.Module]:
    """Return ``(name, module)`` of the final classifier: timm's ``get_classifier()``, a transformers
    ``classifier`` attribute, or else the last ``nn.Linear`` in the model."""
    name_of = {id(module): name for name, module in model.named_modules()}
    for owner_name, owner in model.named_modules():
        getter = getattr(owner, "get_classifier", None)
        if callable(getter):
            head = getter()
            if isinstance(head, nn.Module) and id(head) in name_of and not isinstance(head, nn.Identity):
                return name_of[id(head)], head
        head = getattr(owner, "classifier", None)
        if isinstance(head, nn.Module) and id(head) in name_of and not isinstance(head, nn.Identity):
            return name_of[id(head)], head
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(
            f"Could not find a classifier head in {type(model).__name__}; pass the bottleneck layer by name."
        )
    return linears[-1]


@dataclass(frozen=True)
class LayerInfo:
    """One row of ``list_layers``: module name, class name, output shape (without batch) and feature flag."""

    name: str
    kind: str
    output_shape: tuple[int, ...] | None
    is_feature: bool


@torch.no_grad()
def list_layers(model: nn.Module, input_size: tuple[int, ...] = (3, 224, 224)) -> list[LayerInfo]:
    """Run one dummy forward of shape ``[1, *input_size]`` and return every module with its output shape,
    in execution order. ``is_feature`` marks timm's ``feature_info`` stages, the usual bottleneck choices."""
    feature_names = set()
    for owner in model.modules():
        info = getattr(owner, "feature_info", None)
        if info is not None and hasattr(info, "module_name"):
            feature_names.update(info.module_name())
        elif isinstance(info, list):
            feature_names.update(entry["module"] for entry in info if isinstance(entry, dict) and "module" in entry)
    shapes: dict[str, tuple[int, ...] | None] = {}
    order: list[str] = []

    def record(name: str):
        def hook(module, args, output):
            if name not in shapes:
                tensor = output if isinstance(output, torch.Tensor) else _first_tensor(output)
                shapes[name] = tuple(tensor.shape[1:]) if tensor is not None else None
                order.append(name)
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in model.named_modules() if name]
    was_training = model.training
    try:
        model.eval()
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        model(torch.zeros(1, *input_size, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    modules = dict(model.named_modules())
    return [
        LayerInfo(name, type(modules[name]).__name__, shapes[name], _strip_wrappers(name) in feature_names)
        for name in order
    ]


def format_layers(rows: list[LayerInfo]) -> str:
    """Render ``list_layers`` output as an aligned text table; feature stages are starred."""
    width = max([len(row.name) for row in rows] + [5])
    kind_width = max([len(row.kind) for row in rows] + [4])
    lines = [f"  {'layer':<{width}}  {'type':<{kind_width}}  output shape"]
    for row in rows:
        mark = "*" if row.is_feature else " "
        shape = "x".join(map(str, row.output_shape)) if row.output_shape is not None else "-"
        lines.append(f"{mark} {row.name:<{width}}  {row.kind:<{kind_width}}  {shape}")
    lines.append("(* = a feature stage from timm's feature_info; 'NAME:input' addresses a module's input)")
    return "\n".join(lines)


def _first_tensor(value: object) -> torch.Tensor | None:
    """The first tensor in a module output (a tensor, a tuple/list, or a ModelOutput-like mapping)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None
