"""Which parameters a correction fine-tunes: the freeze policies of RR-ClArC and A-ClArC.

``conv_norm`` is the paper's choice: every convolution and normalisation layer is frozen (norms also stay in
eval mode, so BatchNorm statistics do not move) and the rest — for a CNN, the linear head — is trained.
``before_layer`` freezes everything that runs before the corrected layer, the layer included (module
registration order, which is execution order for timm and transformers models), and trains what follows.
``none`` trains everything.
"""

from __future__ import annotations

from torch import nn

from .layers import LayerRef

FREEZE_POLICIES = ("conv_norm", "none", "before_layer")

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


class FrozenParameters:
    """The result of applying a policy: remembers what it changed so that ``restore`` undoes it exactly."""

    def __init__(self, model: nn.Module, policy: str, layer: LayerRef):
        self.policy = policy
        self._original: dict[nn.Parameter, bool] = {}
        self.eval_modules: list[nn.Module] = []
        frozen_names = _modules_to_freeze(model, policy, layer)
        for name, module in model.named_modules():
            if name not in frozen_names:
                continue
            for parameter in module.parameters(recurse=False):
                if parameter not in self._original:
                    self._original[parameter] = parameter.requires_grad
                    parameter.requires_grad_(False)
            if isinstance(module, _NORM_TYPES):
                self.eval_modules.append(module)
        self.keep_eval_modes()

    @property
    def num_frozen(self) -> int:
        return sum(parameter.numel() for parameter in self._original)

    def keep_eval_modes(self) -> None:
        """Put frozen norm layers back in eval mode (call after every ``model.train()``)."""
        for module in self.eval_modules:
            module.eval()

    def restore(self) -> None:
        """Give every parameter back its original ``requires_grad``."""
        for parameter, requires_grad in self._original.items():
            parameter.requires_grad_(requires_grad)
        self._original.clear()
        self.eval_modules.clear()


def _modules_to_freeze(model: nn.Module, policy: str, layer: LayerRef) -> set[str]:
    names = [name for name, _ in model.named_modules()]
    if policy == "none":
        return set()
    if policy == "conv_norm":
        return {name for name, module in model.named_modules() if isinstance(module, _CONV_TYPES + _NORM_TYPES)}
    layer_name = next((name for name, module in model.named_modules() if module is layer.module), None)
    if layer_name is None:
        raise ValueError(f"Layer {layer.spec!r} is not a module of the model being frozen.")
    stop = names.index(layer_name)
    before = set(names[:stop])
    if not layer.on_input:  # the layer's own output is the activation: its parameters come before it
        before |= {name for name in names if name == layer_name or name.startswith(layer_name + ".")}
    ancestors = {name for name in names if layer_name.startswith(name + ".") or name == ""}
    # An ancestor's own parameters (e.g. a ViT's cls_token / pos_embed on the root) are used before its children.
    return before | ancestors
