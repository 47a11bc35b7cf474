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

    def to_dict(self) -> dict[str, Any]:
        """All fields plus ``debias_method``, as plain JSON-serialisable values."""
        return {"debias_method": self.debias_method, **dataclasses.asdict(self)}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DebiasConfig:
        """Build the config of the method named in ``data["debias_method"]``; unknown keys warn and are dropped."""
        data = dict(data)
        method = data.pop("debias_method", cls.debias_method or None)
        if method not in _CONFIG_CLASSES:
            raise ValueError(
                f"debias_method={method!r} is not a known method; choose one of: {sorted(_CONFIG_CLASSES)}."
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
        return cls.from_dict(json.loads(text))

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``debias_config.json`` into ``save_directory`` and return its path."""
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        target = path / CONFIG_NAME
        target.write_text(self.to_json_string())
        return target

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> DebiasConfig:
        """Read ``debias_config.json`` from a local folder."""
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"No {CONFIG_NAME} in {str(directory)!r}.")
        config = cls.from_json_string(path.read_text())
        config.resolve_paths(Path(directory))
        return config

    def resolve_paths(self, directory: Path) -> None:
        """Make paths recorded relative to a saved config's folder (e.g. its CAV) absolute again."""


def available_methods() -> list[str]:
    """Names of the registered correction methods."""
    return sorted(_CONFIG_CLASSES)
