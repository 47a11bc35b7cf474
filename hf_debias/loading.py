"""Build a classifier from a name: a timm model name, a ``hf-hub:`` / ``local-dir:`` timm id, a timm repo or folder
(saved by timm itself, under any org), or a transformers model id or folder (``AutoModelForImageClassification``).

transformers is always called with ``trust_remote_code=False``: a repo that needs its own Python code is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from torch import nn

logger = logging.getLogger("hf_debias")

_TIMM_PREFIXES = ("hf-hub:", "local-dir:", "timm/")


def is_timm_name(name: str) -> bool:
    """True for names that timm resolves itself (registered architectures and ``hf-hub:``/``local-dir:`` ids)."""
    import timm  # importing timm registers hf_debias' own architectures (simple_convnet; see hf_debias/__init__)

    if name.startswith(_TIMM_PREFIXES):
        return True
    return timm.is_model(name.split(".")[0])


def read_model_config(name_or_path: str, *, revision: str | None = None) -> dict | None:
    """The ``config.json`` of a folder or a Hub model repo as a dict; ``None`` when the folder has none.

    Raises ``FileNotFoundError`` for a Hub id that is neither cached nor reachable, ``ValueError`` for a
    ``config.json`` that is not a JSON object."""
    from .config import read_json_object
    from .hub.resolve import resolve_file

    folder = Path(name_or_path)
    if folder.is_dir() and not (folder / "config.json").is_file():
        return None
    path = resolve_file(name_or_path, "config.json", revision=revision)
    return read_json_object(path, "model config")


def is_timm_config(config: dict | None) -> bool:
    """A config.json written by timm (``save_for_hf`` / ``push_to_hf_hub``): an ``architecture``, no ``model_type``."""
    return bool(config) and "architecture" in config and "model_type" not in config


def refuse_remote_code(name_or_path: str, config: dict | None) -> None:
    """Raise when transformers could only build ``name_or_path`` by running the repo's own Python code."""
    if not config or "auto_map" not in config:
        return
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config.get("model_type")
    if model_type in CONFIG_MAPPING:
        return  # transformers has the class itself; the auto_map is not used with trust_remote_code=False
    raise ValueError(f"{name_or_path!r} needs custom code (its config.json has an 'auto_map' for model_type "
                     f"{model_type!r}, which transformers does not know). hf_debias never runs code from a model "
                     "repo (trust_remote_code=False); use a timm or a built-in transformers architecture.")


def load_classifier(name_or_path: str, *, num_classes: int | None = None, pretrained: bool = False,
                    img_size: int | None = None, class_names: Sequence[str] | None = None,
                    revision: str | None = None) -> nn.Module:
    """Create the classifier ``name_or_path``; ``num_classes`` replaces the head when given.

    Args:
        pretrained: only for timm architecture names (a Hub id or folder always loads its weights); one log
            line says whether the weights are pretrained or random. Nothing is downloaded unless the weights
            are missing from the local cache and the network is allowed.
        img_size: the input size to train at: passed to timm models that take it (ViTs: ``img_size=N``, the
            position embeddings are resampled) and recorded in the timm ``pretrained_cfg`` for the transforms;
            a transformers model with a fixed ``config.image_size`` that differs is refused.
        class_names: one name per class, stored in the model (see ``set_class_names``).
        revision: Hub revision of a repo id.
    """
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"model must be a timm name, a Hub id or a folder, got {name_or_path!r}.")
    if img_size is not None and (not isinstance(img_size, int) or img_size < 1):
        raise ValueError(f"img_size must be a positive integer, got {img_size!r}.")
    if class_names is not None:
        class_names = [str(name) for name in class_names]
        if num_classes is None:
            num_classes = len(class_names)
        elif len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for num_classes={num_classes}.")
    if name_or_path.startswith(_TIMM_PREFIXES):
        timm_id = "hf-hub:" + name_or_path if name_or_path.startswith("timm/") else name_or_path
        model = _create_timm(timm_id, pretrained=True, num_classes=num_classes, img_size=img_size)
    elif is_timm_name(name_or_path) and not Path(name_or_path).is_dir():
        model = _create_timm(name_or_path, pretrained=pretrained, num_classes=num_classes, img_size=img_size)
        source = model.pretrained_cfg.get("hf_hub_id") or model.pretrained_cfg.get("url") or "timm"
        logger.info("%s: %s", name_or_path, f"pretrained weights ({source})" if pretrained else
                    "random weights (pretrained=False; pass --pretrained for timm's pretrained weights)")
    elif not (Path(name_or_path).is_dir() or "/" in name_or_path):
        import difflib

        import timm

        close = difflib.get_close_matches(name_or_path, timm.list_models(), n=5)
        raise ValueError(f"{name_or_path!r} is neither a timm model name (closest: {close}), nor a Hub id "
                         "('org/name'), nor a folder.")
    else:
        config = read_model_config(name_or_path, revision=revision)
        if is_timm_config(config):  # saved by timm itself: timm builds it (TimmWrapper cannot, see module notes)
            where = f"local-dir:{name_or_path}" if Path(name_or_path).is_dir() else f"hf-hub:{name_or_path}"
            if revision and where.startswith("hf-hub:"):
                where += f"@{revision}"
            model = _create_timm(where, pretrained=True, num_classes=num_classes, img_size=img_size)
        else:
            if config is None:
                raise FileNotFoundError(f"{name_or_path!r} is a folder without config.json; found "
                                        f"{sorted(p.name for p in Path(name_or_path).iterdir())[:10]}.")
            refuse_remote_code(name_or_path, config)
            model = _load_transformers(name_or_path, num_classes=num_classes, class_names=class_names,
                                       revision=revision)
            image_size = getattr(model.config, "image_size", None)
            fixed = any("position_embedding" in name or "pos_embed" in name for name, _ in model.named_parameters())
            if img_size is not None and fixed and isinstance(image_size, int) and image_size != img_size:
                raise ValueError(f"{name_or_path!r} is built for {image_size}x{image_size} images "
                                 f"(config.image_size); hf_debias does not resize a transformers model's position "
                                 f"embeddings. Leave out img_size / --image_size, or use a timm model.")
    if class_names is not None:
        set_class_names(model, class_names)
    return model


def _create_timm(name: str, *, pretrained: bool, num_classes: int | None, img_size: int | None) -> nn.Module:
    import timm

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if img_size is None:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    try:
        model = timm.create_model(name, pretrained=pretrained, img_size=img_size, **kwargs)
    except TypeError as err:  # the architecture takes any input size (convolutional networks)
        if "img_size" not in str(err):
            raise
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    channels = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))[0]
    model.pretrained_cfg["input_size"] = (channels, img_size, img_size)  # what the transforms and the saved config use
    model.pretrained_cfg.pop("test_input_size", None)
    return model


def _load_transformers(name_or_path: str, *, num_classes: int | None, class_names: list[str] | None,
                       revision: str | None) -> nn.Module:
    from transformers import AutoModelForImageClassification

    kwargs: dict = {"trust_remote_code": False}
    if revision:
        kwargs["revision"] = revision
    if num_classes is not None:
        kwargs.update(num_labels=num_classes, ignore_mismatched_sizes=True)
    if class_names is not None:
        kwargs.update(id2label=dict(enumerate(class_names)), label2id={name: i for i, name in enumerate(class_names)})
    try:
        return AutoModelForImageClassification.from_pretrained(name_or_path, **kwargs)
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise ValueError(f"{name_or_path!r} needs custom code; hf_debias never runs code from a model repo "
                             "(trust_remote_code=False).") from err
        raise


def load_image_processor(name_or_path: str, *, revision: str | None = None):
    """The transformers image processor of ``name_or_path`` (``trust_remote_code=False``)."""
    from transformers import AutoImageProcessor

    kwargs: dict = {"trust_remote_code": False}
    if revision:
        kwargs["revision"] = revision
    return AutoImageProcessor.from_pretrained(name_or_path, **kwargs)


def set_class_names(model: nn.Module, names: Sequence[str]) -> None:
    """Store one name per class in ``model`` where its library saves them: timm's ``pretrained_cfg["label_names"]``
    (a TimmWrapper's timm model too), a transformers model's ``config.id2label`` / ``label2id``."""
    names = [str(name) for name in names]
    if len(set(names)) != len(names):
        raise ValueError(f"Class names must be unique, got {names}.")
    model = unwrap_model(model)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "id2label"):
        if getattr(config, "num_labels", len(names)) != len(names):
            raise ValueError(f"{len(names)} class names for a model with {config.num_labels} classes.")
        config.id2label = dict(enumerate(names))
        config.label2id = {name: index for index, name in enumerate(names)}
        model = getattr(model, "timm_model", None)
        if model is None:
            return
    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, dict):
        raise ValueError(f"Cannot store class names in a {type(model).__name__}: neither a timm model nor a "
                         "transformers model.")
    classes = getattr(model, "num_classes", len(names))
    if classes != len(names):
        raise ValueError(f"{len(names)} class names for a model with {classes} classes.")
    cfg["label_names"] = names
    cfg["num_classes"] = classes


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

