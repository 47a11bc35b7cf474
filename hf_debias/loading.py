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


def unwrap_model(model: nn.Module, *, through_debias: bool = True) -> nn.Module:
    """The model inside DDP / FSDP (``module``) and ``torch.compile`` (``_orig_mod``) wrappers, and, with
    ``through_debias``, inside ``DebiasModel`` / PEFT wrappers (``get_base_model``) too."""
    while True:
        modules = model.__dict__.get("_modules", {})
        if "_orig_mod" in modules:
            model = modules["_orig_mod"]
        elif "module" in modules and type(model).__name__ in ("DistributedDataParallel", "DataParallel",
                                                              "FullyShardedDataParallel"):
            model = modules["module"]
        elif through_debias and callable(getattr(type(model), "get_base_model", None)):
            inner = model.get_base_model()
            if inner is model:
                return model
            model = inner
        else:
            return model


def model_device(model: nn.Module):
    """Where the model's parameters live (CPU for a model without parameters)."""
    import torch

    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def model_identity(model: nn.Module) -> tuple[str | None, str | None]:
    """Where a model came from, for the record: ``(name_or_path, revision)``.

    transformers models carry ``config._name_or_path``; timm models their ``pretrained_cfg`` (Hub id, else
    architecture name). Wrappers (``DebiasModel``, DDP, ``torch.compile``) are looked through.
    """
    model = unwrap_model(model)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "_name_or_path", None):
        return config._name_or_path, getattr(config, "_commit_hash", None)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg:
        hub_id = cfg.get("hf_hub_id")
        name = cfg.get("architecture")
        tag = cfg.get("tag")
        if hub_id:
            return hub_id, None
        return (f"{name}.{tag}" if name and tag else name), None
    return None, None


def image_transform_for(model: nn.Module, name_or_path: str | None = None):
    """The model's own preprocessing as ``list[PIL.Image] -> pixel_values`` tensor: timm's resolved data config
    for timm models, else the transformers image processor of ``name_or_path`` (default: the model's own)."""
    import torch

    if hasattr(model, "pretrained_cfg") or (name_or_path is not None and is_timm_name(name_or_path)):
        import timm

        transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
        return lambda images: torch.stack([transform(image.convert("RGB")) for image in images])
    from transformers import AutoImageProcessor

    source = name_or_path or model_identity(model)[0]
    if source is None:
        raise ValueError(f"Cannot tell which image processor {type(model).__name__} needs; pass pixel_values.")
    processor = AutoImageProcessor.from_pretrained(source)
    return lambda images: processor([image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"]
