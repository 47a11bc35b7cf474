"""Recognise vision transformers (token models) and find their patch embedding.

On a ViT the ClArC corrections need another recipe than on a conv net (BENCHMARKS §4g): a corner patch lives,
almost additively, in its own tokens of the patch embedding, and later blocks spread it non-linearly through
attention. A CAV pooled over the tokens of a block, corrected with the paper's gradient penalty, leaves the
shortcut whole; a spatial CAV at the patch embedding, corrected with the finite-difference penalty, removes it.
``patch_embedding_layer`` is how the library tells that a model is a token model, so that the recipe is chosen
for it (``compute_cav``'s default layer and pooling, ``RRClArCConfig(penalty_form="auto")``).
"""

from __future__ import annotations

from torch import nn

TRANSFORMERS_TOKEN_MODEL_TYPES = ("vit", "deit", "beit", "dinov2", "dinov2_with_registers", "vit_msn", "vit_mae",
                                  "data2vec-vision", "ijepa")
"""transformers ``config.model_type`` values whose ``embeddings.patch_embeddings`` returns ``[N, T, C]`` tokens."""

TIMM_PATCH_EMBEDDING = "patch_embed"
TRANSFORMERS_PATCH_EMBEDDING = "embeddings.patch_embeddings"


def patch_embedding_layer(model: nn.Module) -> str | None:
    """The module name of the layer where a vision transformer's patches are tokens of their own, or ``None`` for
    any other model (see ``is_token_model``).

    That is the patch embedding, whose output is ``[N, T, C]``: one token per patch, before the class token and the
    position embedding are added — timm's ``patch_embed`` (``VisionTransformer`` and its DeiT, ``Beit``, ``Eva``
    relatives), transformers' ``embeddings.patch_embeddings``. A timm ViT built with ``dynamic_img_size=True``
    keeps a ``[N, H, W, C]`` grid there; its ``norm_pre`` (after the class token and position embedding are added,
    ``[N, 1 + T, C]``) is used instead. ``None`` as well for a token model without either.
    """
    names = dict(model.named_modules())
    for name, module in names.items():
        last = name.rsplit(".", 1)[-1]
        if last == TIMM_PATCH_EMBEDDING and hasattr(module, "proj") and _has_attention(model):
            if getattr(module, "flatten", False) is True:
                return name
            grid_fallback = f"{name.rsplit('.', 1)[0]}.norm_pre" if "." in name else "norm_pre"
            return grid_fallback if grid_fallback in names else None
        if name.endswith(TRANSFORMERS_PATCH_EMBEDDING) and _transformers_token_model(model):
            return name
    return None


def is_token_model(model: nn.Module) -> bool:
    """Whether ``model`` is a vision transformer: a timm model with a ``patch_embed`` and attention blocks (not
    Swin, whose patch embedding is a hierarchical grid), or a transformers model whose ``config.model_type`` is
    one of ``TRANSFORMERS_TOKEN_MODEL_TYPES``. Looks through ``TimmWrapperForImageClassification``, DDP,
    ``torch.compile`` and a ``DebiasModel``."""
    if _transformers_token_model(model):
        return True
    return any(name.rsplit(".", 1)[-1] == TIMM_PATCH_EMBEDDING and hasattr(module, "proj")
               for name, module in model.named_modules()) \
        and _has_attention(model) and not any("Swin" in type(module).__name__ for module in model.modules())


def _transformers_token_model(model: nn.Module) -> bool:
    model_types = {getattr(getattr(module, "config", None), "model_type", None) for module in model.modules()}
    return bool(model_types & set(TRANSFORMERS_TOKEN_MODEL_TYPES))


def _has_attention(model: nn.Module) -> bool:
    return any(type(module).__name__.endswith("Attention") for module in model.modules())
