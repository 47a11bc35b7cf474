"""RR-ClArC as functions: the right-reason penalty on a latent gradient, and the gradient targets.

Dreyer et al., "From Hope to Safety" (AAAI 2024), see docs/methods.md §2: with ``a`` the activation at a layer,
``f̃`` the rest of the network and ``h`` a unit CAV, ``L_RR = (∇_a [m · f̃(a)] · h)²`` averaged over the batch.
``gradient_target_output`` builds the scalar ``m · f̃(a)``; ``latent_gradient`` differentiates it with
``create_graph=True``; ``rr_clarc_penalty`` aggregates the result along ``h``.

``finite_difference_penalty`` is the same loss with the derivative replaced by a finite difference over the concept's
own magnitude: ``((m · f̃(a⁺) − m · f̃(a⁻)) / (μ⁺ − μ⁻))²`` with ``a±`` the activation moved along ``h`` to the mean
projection of images with (μ⁺) and without (μ⁻) the concept. It tends to the gradient form as μ⁺ → μ⁻, but measures
what the concept *does* to the output rather than a local slope: on a ViT the slope can be driven to ~0 while the
artifact still decides the prediction (BENCHMARKS §4g), the finite difference cannot.

Layouts: ``[N, C, H, W]`` conv maps (channels first), ``[N, T, C]`` tokens (channels last) and ``[N, C]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._validation import check_choice

AGGREGATIONS = ("l2_mean", "l2", "l1_mean", "l1", "cosine_mean", "cosine")
"""``l2_mean`` is the paper's loss: the squared projection of the spatial / token *mean* gradient. Without
``_mean`` the projection is taken at every position and averaged; ``l1`` uses |·|, ``cosine`` |cos(g, h)|."""

GRADIENT_TARGETS = ("random_signs", "all_logits", "class", "true_label", "max_logit", "mean_log_prob",
                    "official_logprobs")
"""What is differentiated, summed over the batch: ``random_signs`` (±1 per sample and logit, redrawn each step;
the paper's default), ``all_logits`` (the sum of the logits), ``class`` (one chosen class's logit), ``true_label``
(each sample's label logit), ``max_logit`` (each sample's largest logit), ``mean_log_prob`` (the mean over classes
of the exact ``log_softmax``) and ``official_logprobs`` (the official code's ``logprobs``: the mean over classes of
``log(softmax + 1e-5)``, see ``OFFICIAL_LOGPROBS_EPS``)."""

OFFICIAL_LOGPROBS_EPS = 1e-5
"""The constant the official RR-ClArC code adds inside the log of ``logprobs``. It bounds ``log p`` below by
``log 1e-5`` and all but removes the gradient of every class whose probability is far below 1e-5, so on a
confident model ``official_logprobs`` and ``mean_log_prob`` differ: ``mean_log_prob``'s gradient with respect to
logit ``j`` is ``1/K - p_j`` (about -0.9 for the predicted class of a confident 10-class model), while
``official_logprobs`` weights class ``k``'s term by ``p_k / (p_k + 1e-5)`` (about 0 for the unlikely classes)."""


PENALTY_FORMS = ("gradient", "finite_difference")
"""How RR-ClArC measures the output's response along the CAV: ``gradient`` (the paper: the latent gradient, double
backward) or ``finite_difference`` (the output change between the activation moved to the concept mean and to the
clean mean, divided by that distance; two extra forward passes, no double backward)."""

FINITE_DIFFERENCE_AGGREGATIONS = ("l2_mean", "l2", "l1_mean", "l1")
"""The aggregations the finite-difference form takes: the move along the CAV is one per image, so ``l2`` and
``l2_mean`` (and ``l1`` / ``l1_mean``) are the same loss; ``cosine`` has no finite-difference analogue."""


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
        cav: the concept direction, ``[C]``, or a spatial direction ``[P, C]`` (positions of the activation in
            order, channels last; a spatial CAV): normalised to unit length here. A spatial direction is compared
            with the whole gradient map at once, one projection per image, so ``l2`` and ``l2_mean`` (and the other
            pairs) are then the same loss.
        aggregation: one of ``AGGREGATIONS``.

    Returns a 0-dim float32 (or wider) tensor, differentiable with respect to ``latent_grad``.
    """
    check_choice("aggregation", aggregation, AGGREGATIONS)
    if not isinstance(latent_grad, torch.Tensor) or not latent_grad.is_floating_point():
        raise ValueError(f"latent_grad must be a floating-point tensor, got {type(latent_grad).__name__}.")
    grad = channels_last(latent_grad)
    if grad.dtype in (torch.float16, torch.bfloat16):
        grad = grad.float()
    spatial = isinstance(cav, torch.Tensor) and cav.dim() == 2
    if not isinstance(cav, torch.Tensor) or cav.dim() not in (1, 2) or cav.shape[-1] != grad.shape[-1] or \
            (spatial and cav.shape[0] != grad.shape[1]):
        shape = tuple(cav.shape) if isinstance(cav, torch.Tensor) else type(cav).__name__
        raise ValueError(f"cav must be a 1-D tensor with one entry per channel ({grad.shape[-1]} here) or a spatial "
                         f"[positions, channels] = [{grad.shape[1]}, {grad.shape[-1]}] tensor, got {shape}.")
    direction = cav.to(device=grad.device, dtype=grad.dtype)
    direction = direction / direction.norm().clamp_min(1e-12)
    if spatial:
        projection = (grad * direction).sum(dim=(1, 2))[:, None]  # [N, 1]: the whole map at once
    else:
        if aggregation.endswith("_mean"):
            grad = grad.mean(dim=1, keepdim=True)
        projection = grad @ direction  # [N, positions]
    kind = aggregation.removesuffix("_mean")
    if kind == "l2":
        values = projection.square()
    elif kind == "l1":
        values = projection.abs()
    else:  # cosine; eps keeps an all-zero gradient at 0 instead of NaN
        norm = grad.flatten(1).norm(dim=1, keepdim=True) if spatial else grad.norm(dim=-1)
        values = projection.abs() / norm.clamp_min(1e-12)
    return values.mean()


def gradient_target_values(logits: torch.Tensor, target: str, *, labels: torch.Tensor | None = None,
                           target_class: int | None = None, generator: torch.Generator | None = None,
                           signs: torch.Tensor | None = None) -> torch.Tensor:
    """``m_n · f̃(a_n)`` per sample, ``[N]`` (``gradient_target_output`` is its sum).

    Args:
        logits: ``[N, K]``.
        target: one of ``GRADIENT_TARGETS``.
        labels: the true labels, needed for ``true_label``: one per row.
        target_class: the class index, needed for ``class``.
        generator: draws the signs for ``random_signs`` (a fresh draw on every call).
        signs: ``random_signs`` only: use these ±1 signs ``[N, K]`` instead of drawing (the finite difference
            weights both of its forward passes with the same draw).
    """
    check_choice("gradient_target", target, GRADIENT_TARGETS)
    if logits.dim() != 2:
        raise ValueError(f"logits must be shaped [N, num_classes], got {tuple(logits.shape)}.")
    logits = logits.float()
    if target == "random_signs":
        if signs is None:
            signs = random_signs(logits.shape, logits.device, generator)
        return (signs.to(logits.device, logits.dtype) * logits).sum(dim=1)
    if target == "all_logits":
        return logits.sum(dim=1)
    if target == "class":
        if target_class is None or not 0 <= target_class < logits.shape[1]:
            raise ValueError(f"gradient_target='class' needs target_class in [0, {logits.shape[1] - 1}], "
                             f"got {target_class!r}.")
        return logits[:, target_class]
    if target == "true_label":
        if labels is None:
            raise ValueError("gradient_target='true_label' needs the labels of the batch.")
        labels = labels.reshape(-1)
        if labels.shape[0] != logits.shape[0]:
            raise ValueError(f"gradient_target='true_label' needs one label per row: {labels.shape[0]} labels for "
                             f"{logits.shape[0]} rows.")
        return logits.gather(1, labels.long().view(-1, 1))[:, 0]
    if target == "max_logit":
        return logits.max(dim=1).values
    if target == "official_logprobs":
        return (F.softmax(logits, dim=1) + OFFICIAL_LOGPROBS_EPS).log().mean(dim=1)
    return F.log_softmax(logits, dim=1).mean(dim=1)  # mean_log_prob


def random_signs(shape: torch.Size | tuple[int, ...], device: torch.device | str,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """±1 per sample and logit (``random_signs``); drawn on the CPU when a ``generator`` is given."""
    signs = torch.randint(0, 2, tuple(shape), generator=generator, device="cpu" if generator is not None else device)
    return signs.to(device, torch.float32) * 2 - 1


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
    return gradient_target_values(logits, target, labels=labels, target_class=target_class,
                                  generator=generator).sum()


def finite_difference_penalty(logits_concept: torch.Tensor, logits_clean: torch.Tensor, distance: float, *,
                              target: str = "random_signs", labels: torch.Tensor | None = None,
                              target_class: int | None = None, aggregation: str = "l2_mean",
                              generator: torch.Generator | None = None) -> torch.Tensor:
    """RR-ClArC's loss with a finite difference along the CAV instead of the latent gradient.

    Args:
        logits_concept: ``[N, K]``, the model's output with each image's activation moved along the CAV to the
            concept mean μ⁺.
        logits_clean: ``[N, K]``, the same images moved to the clean mean μ⁻.
        distance: μ⁺ − μ⁻, the concept's own magnitude along the CAV (non-zero): dividing by it puts the loss on the
            gradient form's scale, which it equals in the limit of a small distance.
        target: what is compared (``GRADIENT_TARGETS``); ``random_signs`` weights both outputs with one draw.
        aggregation: ``l2_mean`` / ``l2`` (squared, the default) or ``l1_mean`` / ``l1`` (absolute value).

    Returns the mean over the batch, a 0-dim float32 tensor.
    """
    check_choice("aggregation", aggregation, FINITE_DIFFERENCE_AGGREGATIONS)
    if logits_concept.shape != logits_clean.shape or logits_concept.dim() != 2 or logits_concept.shape[0] == 0:
        raise ValueError(f"logits_concept and logits_clean must be the same non-empty [N, num_classes] shape, got "
                         f"{tuple(logits_concept.shape)} and {tuple(logits_clean.shape)}.")
    distance = float(distance)
    if not distance or distance != distance or abs(distance) == float("inf"):
        raise ValueError(f"distance (the concept mean minus the clean mean along the CAV) must be finite and "
                         f"non-zero, got {distance!r}: the CAV does not separate images with and without the concept.")
    signs = random_signs(logits_concept.shape, logits_concept.device, generator) \
        if target == "random_signs" else None
    values = [gradient_target_values(logits, target, labels=labels, target_class=target_class, signs=signs)
              for logits in (logits_concept, logits_clean)]
    difference = (values[0] - values[1]) / distance
    kind = aggregation.removesuffix("_mean")
    return (difference.square() if kind == "l2" else difference.abs()).mean()


def latent_gradient_depends_on_input(logits: torch.Tensor, latent: torch.Tensor, *,
                                     rtol: float = 1e-5) -> bool | None:
    """Whether the gradient of the logits with respect to ``latent`` differs between the images of the batch.

    It is measured, not inferred from the architecture: the gradient of one fixed random combination of the
    logits (the same for every sample, so that the gradient target's own per-sample weights — random signs, the
    label, the softmax — play no part) is compared between the samples whose activations differ. ``False`` means
    it is equal for all of them up to ``rtol`` times its largest entry: the layers after ``latent`` are affine
    (e.g. global pooling and a linear head), so the penalty sees the same gradient for every image. A piecewise
    linear (ReLU) network gives ``True``: its gradient changes with the activation pattern.

    Returns ``None`` when it cannot tell: fewer than two samples with different activations, or a zero gradient.
    ``latent`` must be in the graph of ``logits``; the graph is kept (``retain_graph=True``). Dropout or stochastic
    depth after the layer, in training mode, gives each sample its own random mask and so reads as ``True``.
    """
    flat = latent.detach().flatten(1)
    distinct = (flat - flat[:1]).abs().amax(dim=1) > 0
    distinct[0] = True
    if int(distinct.sum()) < 2:
        return None
    weights = torch.randn(logits.shape[1], generator=torch.Generator().manual_seed(0))
    combination = (logits.float() @ weights.to(logits.device)).sum()
    (grad,) = torch.autograd.grad(combination, latent, retain_graph=True, allow_unused=True)
    if grad is None:
        return None
    grad = grad.detach()[distinct].flatten(1).double()
    scale = float(grad.abs().amax())
    if scale == 0.0 or scale != scale:  # zero (dead units) or NaN: nothing to compare
        return None
    return bool((grad - grad[:1]).abs().amax() > rtol * scale)


def latent_gradient(output: torch.Tensor, activation: torch.Tensor, *, create_graph: bool = True) -> torch.Tensor:
    """``∇_activation output``, kept in the graph (``create_graph=True``) so that a penalty on it can be trained."""
    if not activation.requires_grad:
        raise ValueError("The activation does not require grad, so the model's output has no gradient with respect "
                         "to it; the layer must be reached by autograd (see RRClArCConfig.freeze).")
    (grad,) = torch.autograd.grad(output, activation, create_graph=create_graph)
    return grad
