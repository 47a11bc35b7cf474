"""A forward hook that captures, and optionally transforms, the activation at one layer."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .layers import LayerRef, _first_tensor

Transform = Callable[[torch.Tensor], torch.Tensor]


class StopForward(Exception):
    """Raised by a ``LayerHook(stop_forward=True)`` once it has its activation, to skip the rest of the model."""


class LayerHook:
    """Capture the activation at ``ref`` (its output, or its first input for ``name:input``) on every forward.

    With a ``transform`` the activation is replaced in the forward pass (EnD's forward normalisation) and the
    captured tensor is the transformed one. Only the first activation after ``reset()`` is kept, so that the
    recomputation done by gradient checkpointing during backward cannot overwrite it. With ``stop_forward`` the
    hook raises ``StopForward`` right after capturing (activation extraction without running the later layers);
    with ``prepend`` it runs before hooks already on the module (e.g. to see the activation before a correction).
    """

    def __init__(self, ref: LayerRef, transform: Transform | None = None, *, stop_forward: bool = False,
                 prepend: bool = False):
        self.ref = ref
        self.transform = transform
        self.stop_forward = stop_forward
        self.activation: torch.Tensor | None = None
        if ref.on_input:
            self._handle = ref.module.register_forward_pre_hook(self._on_input, prepend=prepend)
        else:
            self._handle = ref.module.register_forward_hook(self._on_output, prepend=prepend)

    def reset(self) -> None:
        """Forget the captured activation (call at the start of every forward)."""
        self.activation = None

    def remove(self) -> None:
        """Detach the hook from the module; the module behaves as if it had never been hooked."""
        self._handle.remove()
        self.activation = None

    def _capture(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.transform is not None:
            tensor = self.transform(tensor)
        if self.activation is None:
            self.activation = tensor
        if self.stop_forward:
            raise StopForward
        return tensor

    def _on_input(self, module, args):
        if not args or not isinstance(args[0], torch.Tensor):
            raise RuntimeError(f"Layer {self.ref.spec!r} was called without a tensor as its first input.")
        new = self._capture(args[0])
        return (new, *args[1:]) if self.transform is not None else None

    def _on_output(self, module, args, output):
        if isinstance(output, torch.Tensor):
            new = self._capture(output)
            return new if self.transform is not None else None
        tensor = _first_tensor(output)
        if tensor is None:
            raise RuntimeError(f"Layer {self.ref.spec!r} returned no tensor; choose another layer.")
        if self.transform is not None:
            raise ValueError(
                f"Layer {self.ref.spec!r} returns a {type(output).__name__}, not a tensor, so the forward pass "
                "cannot be modified there; choose a layer that returns a tensor."
            )
        self._capture(tensor)
        return None
