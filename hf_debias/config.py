"""``DebiasConfig``: the base of every method's config, a dataclass that round-trips through JSON.

Like PEFT's configs it carries a type discriminator (``debias_method``) and the library version, and loading
is forward compatible: keys this version does not know are dropped with a warning instead of failing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from . import __version__

CONFIG_NAME = "debias_config.json"
FILES_KEY = "hf_debias_files"
"""The key of ``debias_config.json`` that records the sha256 of the files saved with it (``hub.integrity``)."""
REQUIRED_KEYS = ("debias_method", "layer")
"""Keys a saved ``debias_config.json`` must have: a missing ``layer`` must not silently become the head input."""

_CONFIG_CLASSES: dict[str, type[DebiasConfig]] = {}


@dataclass
class DebiasConfig:
    """Fields shared by every method.

    Args:
        layer: the bottleneck, a module name (``"layer3"``, ``"timm_model.global_pool"``, ``"head:input"``);
            ``None`` means the input of the classifier head (the pooled pre-logits features).
        base_model_name_or_path: where the base model came from (Hub id, timm name or folder), for the record.
        revision: the base model's revision, for the record.
    """

    debias_method: ClassVar[str] = ""
    method_title: ClassVar[str] = ""
    """The method's name as a reader knows it (model cards)."""
    method_summary: ClassVar[str] = ""
    """One or two sentences for a model card: what the method does and where it comes from."""
    is_composition: ClassVar[bool] = False
    """True for a config made of other configs (``ComposedConfig``): not a method to choose on its own."""

    layer: str | None = None
    base_model_name_or_path: str | None = None
    revision: str | None = None
    hf_debias_version: str = field(default=__version__)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.debias_method:
            _CONFIG_CLASSES[cls.debias_method] = cls

    def __post_init__(self) -> None:
        if self.layer is not None and (not isinstance(self.layer, str) or not self.layer):
            raise ValueError(f"layer must be a module name or None, got {self.layer!r}.")
        for name in ("base_model_name_or_path", "revision"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string or None, got {getattr(self, name)!r}.")
        if not isinstance(self.hf_debias_version, str):
            raise ValueError(f"hf_debias_version must be a string, got {self.hf_debias_version!r}.")

    def to_dict(self) -> dict[str, Any]:
        """All fields plus ``debias_method``, as plain JSON-serialisable values."""
        return {"debias_method": self.debias_method, **dataclasses.asdict(self)}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DebiasConfig:
        """Build the config of the method named in ``data["debias_method"]``; unknown keys warn and are dropped."""
        if not isinstance(data, dict):
            raise ValueError(f"A debias config must be a JSON object, got {type(data).__name__}.")
        data = dict(data)
        data.pop(FILES_KEY, None)  # the saved files' record: bookkeeping of hub.integrity, not a setting
        method = data.pop("debias_method", cls.debias_method or None)
        if method not in _CONFIG_CLASSES:
            compositions = sorted(set(_CONFIG_CLASSES) - set(available_methods()))
            raise ValueError(
                f"debias_method={method!r} is not a known method; choose one of: {available_methods()}"
                + (f" (or {compositions[0]!r} with a list of corrections)." if compositions else ".")
            )
        target = _CONFIG_CLASSES[method]
        if cls.debias_method and target is not cls:
            raise ValueError(f"This is a {method!r} config, not a {cls.debias_method!r} one; load it with "
                             "DebiasConfig.from_dict.")
        known = {f.name for f in dataclasses.fields(target) if f.init}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(
                f"Ignoring unknown {method} config keys {unknown} (written by hf_debias "
                f"{data.get('hf_debias_version', '?')}, this is {__version__}).",
                stacklevel=2,
            )
        return target(**{key: value for key, value in data.items() if key in known})

    @classmethod
    def from_json_string(cls, text: str) -> DebiasConfig:
        return cls.from_dict(parse_json_object(text, "the debias config"))

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``debias_config.json`` into ``save_directory`` (through a temporary file, so it is whole or
        absent) and return its path. A base model given as a local path is recorded as its folder's name."""
        from .hub.paths import recordable_name

        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        data["base_model_name_or_path"] = recordable_name(data.get("base_model_name_or_path"))
        target = path / CONFIG_NAME
        temporary = path / f".{CONFIG_NAME}.tmp"
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(temporary, target)
        return target

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> DebiasConfig:
        """Read ``debias_config.json`` from a local folder."""
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"No {CONFIG_NAME} in {str(directory)!r}.")
        data = read_json_object(path, "debias config")
        target = _CONFIG_CLASSES.get(data.get("debias_method"), DebiasConfig)
        missing = target.missing_saved_fields(data)
        if missing:
            raise ValueError(f"{path} lacks the fields {missing}; a saved debias config has {list(REQUIRED_KEYS)} "
                             "(\"layer\": null for the classifier's input). Save the model again.")
        try:
            config = cls.from_dict(data)
            config.resolve_paths(Path(directory))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: {err}") from None
        return config

    @classmethod
    def missing_saved_fields(cls, data: dict[str, Any]) -> list[str]:
        """The ``REQUIRED_KEYS`` a saved ``debias_config.json`` (``data``) lacks (a composition names its parts')."""
        return [key for key in REQUIRED_KEYS if key not in data]

    def resolve_paths(self, directory: Path) -> None:
        """Make paths recorded relative to a saved config's folder (e.g. its CAV) absolute again; a path read
        from the file must stay inside ``directory``."""


def parse_json_object(text: str, where: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object; NaN / Infinity and anything but an object are refused, naming ``where``."""
    def refuse_constant(name: str):
        raise ValueError(f"{where} holds {name}, which is not a finite number; JSON files hf_debias reads must "
                         "hold finite numbers only.")

    try:
        data = json.loads(text, parse_constant=refuse_constant)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON: {err}.") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where} must hold a JSON object ({{...}}), got a JSON {type(data).__name__}.")
    return data


def read_json_object(path: str | os.PathLike, what: str = "JSON file") -> dict[str, Any]:
    """The JSON object in ``path``; every error names the file (not JSON, not UTF-8, not an object, NaN)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} ({what}) is not UTF-8 text: {err}.") from None
    return parse_json_object(text, f"{path} ({what})")


def available_methods() -> list[str]:
    """Names of the registered correction methods (a composition of several, ``composed``, is built from a list
    of these and is not one of them)."""
    return sorted(name for name, cls in _CONFIG_CLASSES.items() if not cls.is_composition)
