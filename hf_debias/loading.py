"""Build a classifier from a name: a timm model name, a ``hf-hub:`` / ``local-dir:`` timm id, or a transformers
model id or folder (loaded with ``AutoModelForImageClassification``)."""

from __future__ import annotations

from pathlib import Path

from torch import nn


def is_timm_name(name: str) -> bool:
    """True for names that timm resolves itself (registered architectures and ``hf-hub:``/``local-dir:`` ids)."""
    import timm

    if name.startswith(("hf-hub:", "local-dir:", "timm/")):
        return True
    return name.split(".")[0] in timm.list_models()


def load_classifier(name_or_path: str, *, num_classes: int | None = None, pretrained: bool = False) -> nn.Module:
    """Create the classifier ``name_or_path``; ``num_classes`` replaces the head when given.

    ``pretrained`` only matters for timm architecture names (a Hub id or folder always loads its weights);
    nothing is downloaded unless the weights are missing from the local cache and the network is allowed.
    """
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"model must be a timm name, a Hub id or a folder, got {name_or_path!r}.")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if is_timm_name(name_or_path):
        import timm

        if name_or_path.startswith("timm/"):
            name_or_path = "hf-hub:" + name_or_path
        hub_or_dir = name_or_path.startswith(("hf-hub:", "local-dir:"))
        return timm.create_model(name_or_path, pretrained=pretrained or hub_or_dir, **kwargs)
    if not (Path(name_or_path).is_dir() or "/" in name_or_path):
        import difflib

        import timm

        close = difflib.get_close_matches(name_or_path, timm.list_models(), n=5)
        raise ValueError(f"{name_or_path!r} is neither a timm model name (closest: {close}), nor a Hub id "
                         "('org/name'), nor a folder.")
    from transformers import AutoModelForImageClassification

    if num_classes is None:
        return AutoModelForImageClassification.from_pretrained(name_or_path)
    return AutoModelForImageClassification.from_pretrained(name_or_path, num_labels=num_classes,
                                                           ignore_mismatched_sizes=True)
