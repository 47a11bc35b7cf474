"""RR-ClArC as functions: the right-reason penalty on a latent gradient, and the gradient targets.

Dreyer et al., "From Hope to Safety" (AAAI 2024), see docs/methods.md §2: with ``a`` the activation at a layer,
``f̃`` the rest of the network and ``h`` a unit CAV, ``L_RR = (∇_a [m · f̃(a)] · h)²`` averaged over the batch.
``gradient_target_output`` builds the scalar ``m · f̃(a)``; ``latent_gradient`` differentiates it with
``create_graph=True``; ``rr_clarc_penalty`` aggregates the result along ``h``.

Layouts: ``[N, C, H, W]`` conv maps (channels first), ``[N, T, C]`` tokens (channels last) and ``[N, C]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._validation import check_choice

AGGREGATIONS = ("l2_mean", "l2", "l1_mean", "l1", "cosine_mean", "cosine")
"""``l2_mean`` is the paper's loss: the squared projection of the spatial / token *mean* gradient. Without
``_mean`` the projection is taken at every position and averaged; ``l1`` uses |·|, ``cosine`` |cos(g, h)|."""

GRADIENT_TARGETS = ("random_signs", "all_logits", "class", "true_label", "max_logit", "mean_log_prob")
"""What is differentiated: ``random_signs`` (±1 per sample and logit, redrawn each step; the paper's default),
``all_logits`` (the sum of the logits), ``class`` (one chosen class's logit), ``true_label`` (each sample's label
logit), ``max_logit`` (each sample's largest logit) and ``mean_log_prob`` (the mean log-probability)."""


def channels_last(latent: torch.Tensor, name: str = "latent_grad") -> torch.Tensor:
    """View ``[N, C, H, W]`` as ``[N, H*W, C]`` and ``[N, C]`` as ``[N, 1, C]``; ``[N, T, C]`` is kept."""
    if latent.dim() == 4:
        return latent.flatten(2).transpose(1, 2)
    if latent.dim() == 3:
        return latent
    if latent.dim() == 2:
        return latent[:, None, :]
    raise ValueError(f"{name} must be shaped [N, C, H, W], [N, T, C] or [N, C], got {tuple(latent.shape)}.")


def num_channels(latent: torch.Tensor) -> int:
    """The channel count C of an activation in one of the three layouts."""
    return channels_last(latent, "activation").shape[-1]


def rr_clarc_penalty(latent_grad: torch.Tensor, cav: torch.Tensor, *, aggregation: str = "l2_mean") -> torch.Tensor:
    """The right-reason loss: how much the latent gradient points along ``cav``, averaged over the batch.

    Args:
        latent_grad: ``∇_a [m · f̃(a)]``, shaped like the activation (see the module docstring).
        cav: the concept direction, ``[C]``; normalised to unit length here.
        aggregation: one of ``AGGREGATIONS``.

    Returns a 0-dim float32 (or wider) tensor, differentiable with respect to ``latent_grad``.
    """
    check_choice("aggregation", aggregation, AGGREGATIONS)
    if not isinstance(latent_grad, torch.Tensor) or not latent_grad.is_floating_point():
        raise ValueError(f"latent_grad must be a floating-point tensor, got {type(latent_grad).__name__}.")
    grad = channels_last(latent_grad)
    if grad.dtype in (torch.float16, torch.bfloat16):
        grad = grad.float()
    if not isinstance(cav, torch.Tensor) or cav.dim() != 1 or cav.shape[0] != grad.shape[-1]:
        shape = tuple(cav.shape) if isinstance(cav, torch.Tensor) else type(cav).__name__
        raise ValueError(f"cav must be a 1-D tensor with one entry per channel ({grad.shape[-1]} here), got {shape}.")
    direction = F.normalize(cav.to(device=grad.device, dtype=grad.dtype), dim=0)
    if aggregation.endswith("_mean"):
        grad = grad.mean(dim=1, keepdim=True)
    projection = grad @ direction  # [N, positions]
    kind = aggregation.removesuffix("_mean")
    if kind == "l2":
        values = projection.square()
    elif kind == "l1":
        values = projection.abs()
    else:  # cosine; eps keeps an all-zero gradient at 0 instead of NaN
        values = projection.abs() / grad.norm(dim=-1).clamp_min(1e-12)
    return values.mean()


def gradient_target_output(logits: torch.Tensor, target: str, *, labels: torch.Tensor | None = None,
                           target_class: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The scalar ``Σ_n m_n · f̃(a_n)`` whose latent gradient the penalty constrains.

    Args:
        logits: ``[N, K]``.
        target: one of ``GRADIENT_TARGETS``.
        labels: the true labels, needed for ``true_label``.
        target_class: the class index, needed for ``class``.
        generator: draws the signs for ``random_signs`` (a fresh draw on every call).
    """
    check_choice("gradient_target", target, GRADIENT_TARGETS)
    if logits.dim() != 2:
        raise ValueError(f"logits must be shaped [N, num_classes], got {tuple(logits.shape)}.")
    logits = logits.float()
    if target == "random_signs":
        signs = torch.randint(0, 2, logits.shape, generator=generator,
                              device="cpu" if generator is not None else logits.device)
        return ((signs.to(logits.device, logits.dtype) * 2 - 1) * logits).sum()
    if target == "all_logits":
        return logits.sum()
    if target == "class":
        if target_class is None or not 0 <= target_class < logits.shape[1]:
            raise ValueError(f"gradient_target='class' needs target_class in [0, {logits.shape[1] - 1}], "
                             f"got {target_class!r}.")
        return logits[:, target_class].sum()
    if target == "true_label":
        if labels is None:
            raise ValueError("gradient_target='true_label' needs the labels of the batch.")
        return logits.gather(1, labels.long().view(-1, 1)).sum()
    if target == "max_logit":
        return logits.max(dim=1).values.sum()
    return F.log_softmax(logits, dim=1).mean(dim=1).sum()  # mean_log_prob


def latent_gradient(output: torch.Tensor, activation: torch.Tensor, *, create_graph: bool = True) -> torch.Tensor:
    """``∇_activation output``, kept in the graph (``create_graph=True``) so that a penalty on it can be trained."""
    if not activation.requires_grad:
        raise ValueError("The activation does not require grad, so the model's output has no gradient with respect "
                         "to it; the layer must be reached by autograd (see RRClArCConfig.freeze).")
    (grad,) = torch.autograd.grad(output, activation, create_graph=create_graph)
    return grad
