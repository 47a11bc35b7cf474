"""``load_image_dataset``: the image datasets users already have, read into one ``datasets.DatasetDict``.

Layouts: class folders (with or without split folders), a metadata table next to the images (CSV, TSV, JSONL,
parquet; Waterbirds as downloaded), CelebA as downloaded (attribute and partition files), a local folder holding a
Hub dataset repo (parquet / arrow files) or a ``save_to_disk`` folder, and a Hub dataset id. Whatever the source,
the result has the splits ``train`` / ``validation`` / ``test`` (only those present) and the columns ``image``
(``datasets.Image``), ``labels`` (``ClassLabel``), ``bias_labels`` (``ClassLabel``, when a bias is given) and
``image_path`` (the path relative to the dataset root, where the source has files)."""

from __future__ import annotations

import csv
import difflib
import json
import logging
import os
import re
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
#: Split names (case-insensitive) and numbers accepted in split columns, split folders and Hub split names.
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "validation", "valid": "validation",
                 "validation": "validation", "dev": "validation", "test": "test", "testing": "test",
                 "0": "train", "1": "validation", "2": "test"}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
PATH_COLUMNS = ("file_name", "img_filename", "image_id", "image", "path", "filepath")
LABEL_COLUMNS = ("label", "labels", "y")
HUB_IMAGE_COLUMNS = ("image", "img", "images", "picture", "photo")
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")
CELEBA_ATTRIBUTE_FILES = ("list_attr_celeba.txt", "list_attr_celeba.csv")
CELEBA_PARTITION_FILES = ("list_eval_partition.txt", "list_eval_partition.csv")
NO_SPLIT = ("", "none")
#: Texts that pandas / numpy / R write for a missing value; in a label or bias column they are an error.
MISSING_MARKERS = ("nan", "NaN", "NAN", "-nan", "null", "NULL", "<NA>", "N/A", "n/a", "#N/A")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_SHOW = 5  # offenders named in an error message
_LFS_POINTER = b"version https://git-lfs"


@dataclass
class _Labels:
    """Integer ids 0..K-1 of one column and the K class names."""

    ids: list[int]
    names: list[str]


@dataclass
class _Files:
    """A file-based dataset before it becomes a ``DatasetDict``: one entry per image."""

    root: Path
    where: str  # how messages name the source
    paths: list[str]  # relative to root (posix), or absolute where the file lies outside it
    labels: _Labels
    bias: _Labels | None = None
    splits: list[str] | None = None  # "train" / "validation" / "test" per image; None: no split information
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- public API
def load_image_dataset(
    source: str | os.PathLike, *,
    label_column: str | None = None,
    bias_label_column: str | None = None,
    split_column: str | None = None,
    image_column: str | None = None,
    bias_csv: str | os.PathLike | None = None,
    revision: str | None = None,
) -> datasets.DatasetDict:
    """Read an image-classification dataset in any of the usual layouts.

    Args:
        source: a folder (class folders; a metadata table ``metadata.{csv,tsv,jsonl,parquet}`` next to the
            images, e.g. Waterbirds as downloaded; CelebA as downloaded; a clone of a Hub dataset repo with
            parquet / arrow files; a ``save_to_disk`` folder), a table file, or a Hub dataset id (a local path of
            the same name wins).
        label_column: the column (CelebA: attribute) holding the target; ``None`` finds one of
            ``label`` / ``labels`` / ``y`` (class folders: the folder names).
        bias_label_column: the column (CelebA: attribute) holding the bias; with ``bias_csv``, that table's
            column (default ``bias_labels``); ``None`` without ``bias_csv``: ``bias_labels`` if the source has it,
            else no bias.
        split_column: the column giving the split (``train`` / ``training``, ``val`` / ``valid`` / ``validation``
            / ``dev``, ``test`` / ``testing``, or 0 / 1 / 2 as in Waterbirds and CelebA; the same names serve for
            split folders); ``None`` uses ``split`` when present (CelebA: the partition file);
            ``""`` or ``"none"``: no split column. Without any split information everything is ``train``
            (with a warning).
        image_column: the image path column of a table, or the image column of a Hub / parquet dataset;
            ``None`` finds it among the usual names.
        bias_csv: a table (CSV, TSV, JSONL, parquet) of per-image bias labels, matched by the path relative to
            the dataset root (``cat/0000.png``; a shorter path suffix such as the bare file name only when it is
            unique). Every image needs exactly one row.
        revision: the Hub revision (Hub dataset ids only).

    Returns:
        A ``DatasetDict`` with the splits ``train`` (always) and ``validation`` / ``test`` where present, and the
        columns ``image``, ``labels`` and, as applicable, ``bias_labels`` and ``image_path``. The number of classes
        is ``features["labels"].num_classes``, taken over all splits (or the source's ``ClassLabel``).

    Raises:
        FileNotFoundError: the source, an image file or a needed file is missing.
        ValueError: a column is missing or ambiguous, a value is invalid, a split is empty or unknown, or the
            bias table does not match the images one to one.
    """
    options = _Options(label_column, bias_label_column, split_column, image_column,
                       None if bias_csv is None else Path(os.path.expanduser(os.fspath(bias_csv))))
    path = Path(os.path.expanduser(os.fspath(source))).resolve()
    if path.exists():
        if revision is not None:
            warnings.warn(f"revision={revision!r} applies to Hub dataset ids only; {str(path)!r} is read as it is "
                          "on disk.", stacklevel=2)
        return _from_file(path, options) if path.is_file() else _from_folder(path, options)
    name = os.fspath(source)
    if not _HUB_ID.match(name):
        raise FileNotFoundError(f"Dataset {name!r} does not exist (neither a file nor a folder).")
    import datasets

    where = f"Hub dataset {name!r}"
    if path.parent.is_dir() and path.parent != Path.cwd().resolve():  # 'data/nope' beside an existing data/
        where += f" (the local path {path} does not exist either)"
    return _from_datasets(_call_datasets(datasets.load_dataset, name, revision=revision, where=where), where, options)


@dataclass(frozen=True)
class _Options:
    """The caller's column choices, passed unchanged to every layout reader."""

    label_column: str | None
    bias_label_column: str | None
    split_column: str | None
    image_column: str | None
    bias_csv: Path | None

    @property
    def no_split(self) -> bool:
        """``split_column`` is ``""`` or ``"none"``: do not split by column (or folders)."""
        return self.split_column is not None and self.split_column.strip().lower() in NO_SPLIT


# ----------------------------------------------------------------------------------------------- dispatch
def _from_file(path: Path, options: _Options) -> datasets.DatasetDict:
    """A table file: CelebA's attribute file, a parquet file with the images inside, or a metadata table."""
    if path.name in CELEBA_ATTRIBUTE_FILES:
        root = path.parent.parent if path.parent.name == "Anno" else path.parent  # the official Anno/ folder
        return _finish(_celeba(root, path, options))
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise ValueError(f"{path} is not a table ({', '.join(TABLE_SUFFIXES)}); give a folder, a table or a "
                         "Hub dataset id.")
    if path.suffix.lower() == ".parquet" and _holds_images(path):
        import datasets

        loaded = _call_datasets(datasets.load_dataset, "parquet", data_files={"train": str(path)}, where=str(path))
        return _from_datasets(loaded, str(path), options)
    return _finish(_table(_read_table(path), path.parent, str(path), options))


def _from_folder(path: Path, options: _Options) -> datasets.DatasetDict:
    """A folder: ``save_to_disk`` output, a metadata table, CelebA, a Hub repo clone, or class folders."""
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        import datasets

        return _from_datasets(datasets.load_from_disk(str(path)), str(path), options)
    tables = [path / f"metadata{suffix}" for suffix in TABLE_SUFFIXES if (path / f"metadata{suffix}").is_file()]
    if len(tables) > 1:
        raise ValueError(f"{path} holds several metadata tables ({', '.join(t.name for t in tables)}); "
                         "pass the one to use as the dataset.")
    if tables:
        return _from_file(tables[0], options)
    for folder in (path, path / "Anno"):
        for name in CELEBA_ATTRIBUTE_FILES:
            if (folder / name).is_file():
                return _finish(_celeba(path, folder / name, options))
    data_file = next((p for p in _walk_files(path, max_depth=3) if p.suffix in (".parquet", ".arrow")), None)
    if data_file is not None:
        import datasets

        with open(data_file, "rb") as handle:
            if handle.read(len(_LFS_POINTER)) == _LFS_POINTER:
                raise FileNotFoundError(f"{data_file} is a Git LFS pointer, not the data: run `git lfs pull` in "
                                        f"{path} (or pass the Hub dataset id).")

        return _from_datasets(_call_datasets(datasets.load_dataset, str(path), where=str(path)), str(path), options)
    return _finish(_class_folders(path, options))


def _holds_images(path: Path) -> bool:
    """Whether a parquet file stores images inside (an ``Image`` feature or a ``{bytes, path}`` struct)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    features = json.loads((schema.metadata or {}).get(b"huggingface", b"{}")).get("info", {}).get("features", {})
    if any(isinstance(f, dict) and f.get("_type") == "Image" for f in features.values()):
        return True
    return any(pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0 for f in schema)


def _call_datasets(function, *args, where: str, **kwargs):
    """``function(*args, **kwargs)`` with datasets' errors turned into one clear FileNotFoundError / ValueError."""
    import datasets

    try:
        return function(*args, **kwargs)
    except (datasets.exceptions.DatasetNotFoundError, ConnectionError, FileNotFoundError) as error:
        raise FileNotFoundError(f"Could not read {where}: it is not a local folder or file, and the Hub dataset "
                                f"could not be loaded ({type(error).__name__}: {error}).") from error
    except datasets.exceptions.DatasetsError as error:
        raise ValueError(f"Could not read {where}: {type(error).__name__}: {error}") from error


# ----------------------------------------------------------------------------------------------- class folders
def _class_folders(root: Path, options: _Options) -> _Files:
    """Class sub-folders (``root/cat/0000.png``), or split folders holding them (``root/train/cat/...``)."""
    if options.label_column is not None:
        raise ValueError(f"{root} is an image folder: the class is the sub-folder name, so label_column="
                         f"{options.label_column!r} does not apply (put a metadata table next to the images to "
                         "take labels from a column).")
    if options.split_column is not None and not options.no_split:
        raise ValueError(f"{root} is an image folder: its splits are split folders (train/, val/, test/), so "
                         f"split_column={options.split_column!r} does not apply.")
    if options.bias_label_column is not None and options.bias_csv is None:
        raise ValueError(f"{root} is an image folder and has no columns: bias_label_column="
                         f"{options.bias_label_column!r} needs bias_csv=<a table of per-image bias labels>.")
    if options.image_column is not None:
        warnings.warn(f"image_column={options.image_column!r} does not apply to the image folder {root}; ignored.",
                      stacklevel=4)
    folders = _subfolders(root)
    split_folders = [p for p in folders if p.name.lower() in SPLIT_ALIASES and not p.name.isdigit()]
    if split_folders and len(split_folders) != len(folders):
        others = [p.name for p in folders if p not in split_folders]
        raise ValueError(f"{root} mixes split folders ({', '.join(p.name for p in split_folders)}) with other "
                         f"folders ({', '.join(others[:_SHOW])}); use split folders that hold class folders, or "
                         "class folders only.")
    _no_loose_images(root)
    groups: list[tuple[str, Path]] = [("train", root)]
    if split_folders:
        groups, seen = [], {}
        for folder in split_folders:
            split = SPLIT_ALIASES[folder.name.lower()]
            if split in seen:
                raise ValueError(f"{root} has two folders for the {split} split: {seen[split]}/ and {folder.name}/.")
            seen[split] = folder.name
            groups.append((split, folder))
            _no_loose_images(folder)
    paths, splits, class_of, classes, empty = [], [], [], set(), []
    for split, folder in groups:
        n_before = len(paths)
        for class_dir in _subfolders(folder):
            classes.add(class_dir.name)  # a class folder without images still declares its class
            files = [p for p in _walk_files(class_dir) if p.suffix.lower() in IMAGE_EXTENSIONS]
            if not files:
                empty.append(class_dir.relative_to(root).as_posix())
            for file in files:
                paths.append(file.relative_to(root).as_posix())
                splits.append(split)
                class_of.append(class_dir.name)
        if split_folders and len(paths) == n_before:
            raise ValueError(f"The {split} split folder {folder} holds no images in class sub-folders.")
    if not paths:
        raise FileNotFoundError(f"{root} holds no images ({', '.join(IMAGE_EXTENSIONS)}) in class sub-folders.")
    if empty:
        warnings.warn(f"Class folders without images (their classes are kept): {', '.join(empty[:_SHOW])}.",
                      stacklevel=4)
    names = sorted(classes)
    if len(names) == 1:
        inner = None if split_folders else _other_layout(root / names[0])
        if not split_folders and not inner and all(p.count("/") > 1 for p in paths):
            below = ", ".join(d.name for d in _subfolders(root / names[0])[:_SHOW])
            inner = f"no image of its own, only sub-folders ({below})"
        if inner:
            raise ValueError(f"{root} has a single class folder, {names[0]}/, which holds {inner}: pass "
                             f"{root / names[0]} as the dataset.")
        warnings.warn(f"{root} has a single class ({names[0]}).", stacklevel=4)
    elif not split_folders:
        _no_unnamed_split_folders(root, names)
    trained = {c for c, s in zip(class_of, splits) if s == "train"}
    for split in ("validation", "test"):
        extra = sorted({c for c, s in zip(class_of, splits) if s == split} - trained)
        if extra and trained:
            warnings.warn(f"The {split} split of {root} has classes that train has no image of: "
                          f"{', '.join(extra[:_SHOW])}.", stacklevel=4)
    index = {name: i for i, name in enumerate(names)}
    use_splits = bool(split_folders) and not options.no_split
    files = _Files(root, str(root), paths, _Labels([index[c] for c in class_of], names),
                   splits=splits if use_splits else None)
    if split_folders and not use_splits:
        files.notes.append(f"split_column={options.split_column!r}: the split folders are not used")
    if options.bias_csv is not None:
        files.bias = _bias_from_table(options.bias_csv, files, options.bias_label_column or "bias_labels", None)
    return files


def _no_unnamed_split_folders(root: Path, names: Sequence[str]) -> None:
    """Refuse class folders that all hold the same sub-folders and no image of their own: split folders under
    other names (``root/A/cat/...``, ``root/B/cat/...``) that would otherwise become classes A and B."""
    inner = {}
    for name in names:
        folder = root / name
        if any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir()):
            return
        inner[name] = {d.name for d in _subfolders(folder)}
    shared = set.intersection(*inner.values())
    if shared:
        raise ValueError(f"The class folders of {root} ({', '.join(names[:_SHOW])}) hold no image of their own but "
                         f"the same sub-folders ({', '.join(sorted(shared)[:_SHOW])}): if they are split folders, "
                         "name them train / val / test (or training / validation / testing ...).")


def _no_loose_images(folder: Path) -> None:
    loose = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if loose:
        raise ValueError(f"{folder} has images outside class folders ({', '.join(loose[:_SHOW])}); put each "
                         "image in a sub-folder named after its class.")


_SKIPPED_FOLDERS = ("__MACOSX",)  # resource forks that macOS zips carry along


def _skipped(name: str) -> bool:
    return name.startswith(".") or name in _SKIPPED_FOLDERS


def _other_layout(folder: Path) -> str | None:
    """What in ``folder`` marks a dataset that is not class folders (a metadata table, CelebA, data files)."""
    for name in [f"metadata{s}" for s in TABLE_SUFFIXES] + list(CELEBA_ATTRIBUTE_FILES) + ["dataset_dict.json"]:
        if (folder / name).is_file():
            return name
    return None


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _skipped(p.name))


def _walk_files(folder: Path, max_depth: int | None = None):
    """Every non-hidden file under ``folder``, in sorted order (``max_depth`` folders deep at most)."""
    base = len(folder.parts)
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        if max_depth is not None and len(Path(dirpath).parts) - base >= max_depth:
            dirnames[:] = []
        dirnames[:] = sorted(d for d in dirnames if not _skipped(d))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath, name)


# ----------------------------------------------------------------------------------------------- tables
def _read_table(path: Path) -> dict[str, list]:
    """A CSV / TSV (values as strings), JSONL or parquet table as ``{column: values}``."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csv.reader(handle, delimiter="," if suffix == ".csv" else "\t") if row]
        if not rows:
            raise ValueError(f"{path} is empty.")
        header = [name.strip() for name in rows[0]]
        for number, row in enumerate(rows[1:], 2):
            if len(row) != len(header):
                raise ValueError(f"{path}, row {number}: {len(row)} fields, but the header has {len(header)} "
                                 f"({', '.join(header)}).")
        columns = {name: [row[i] for row in rows[1:]] for i, name in enumerate(header)}
        if len(columns) != len(header):
            raise ValueError(f"{path} repeats column names in its header: {', '.join(header)}.")
    elif suffix == ".jsonl":
        records = []
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{path}, line {number} is not JSON: {error}.") from error
        names = list(dict.fromkeys(key for record in records for key in record))
        columns = {name: [record.get(name) for record in records] for name in names}
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        columns = pq.read_table(path).to_pydict()
    else:
        raise ValueError(f"{path}: tables must be one of {', '.join(TABLE_SUFFIXES)}.")
    if not columns or not next(iter(columns.values())):
        raise ValueError(f"{path} has no rows.")
    return columns


def _table(columns: dict[str, list], root: Path, where: str, options: _Options, *, default_split: str = "split",
           kind: str = "column", signed: bool = False) -> _Files:
    """A metadata table (one row per image) whose path column points at files under ``root``; CelebA's
    attributes are its ``kind="attribute"`` columns with ``signed`` (-1/1) values."""
    names = list(columns)
    image_column = options.image_column
    if image_column is not None and image_column not in columns:
        raise _missing(where, "column", image_column, names, "image_column")
    path_column = image_column or next((c for c in PATH_COLUMNS if c in columns), None)
    if path_column is None:
        raise ValueError(f"{where} has no image path column (none of {', '.join(PATH_COLUMNS)}); its columns "
                         f"are {', '.join(names)}. Pass image_column=.")
    paths = _resolve_paths(columns[path_column], root, where, path_column)
    repeated = [p for p, n in Counter(paths).items() if n > 1]
    if repeated:
        raise ValueError(f"{where} lists {len(repeated)} images more than once, e.g. {', '.join(repeated[:_SHOW])}.")
    split_name = _split_column(options.split_column, names, default_split, where)
    values = [c for c in names if c not in (path_column, split_name)]
    label_name = _label_column(options.label_column, values, where, kind)
    files = _Files(root, where, paths, _encode(columns[label_name], label_name, where, signed, paths),
                   splits=_parse_splits(columns[split_name], where, split_name) if split_name else None)
    bias_name = _bias_column(options.bias_label_column, options.bias_csv, values, where, kind)
    if bias_name == label_name:
        raise ValueError(f"{where}: label_column and bias_label_column are both {label_name!r}.")
    if bias_name is not None:
        files.bias = _encode(columns[bias_name], bias_name, where, signed, paths)
    elif options.bias_csv is not None:
        files.bias = _bias_from_table(options.bias_csv, files, options.bias_label_column or "bias_labels",
                                      image_column)
    return files


def _resolve_paths(values: Sequence[Any], root: Path, where: str, column: str) -> list[str]:
    """The table's image paths as paths relative to ``root`` (absolute where a file lies outside it).

    Paths are relative to the table's folder; when they are not found there, a sub-folder that holds all of them
    is tried (CelebA's ``img_align_celeba/``, Kaggle's ``img_align_celeba/img_align_celeba/``)."""
    keys = []
    for row, value in enumerate(values, 1):
        if value is None or not str(value).strip():
            raise ValueError(f"{where}: row {row} has no image path in column {column!r}.")
        keys.append(_normalise(str(value), root))
    files = _relative_files(root)
    by_name = defaultdict(list)
    for relative in files:
        by_name[relative.rsplit("/", 1)[-1]].append(relative)
    prefixes = {""}
    for key in keys[:_SHOW]:
        if not os.path.isabs(key):
            prefixes.update(f[:-len(key)] for f in by_name.get(key.rsplit("/", 1)[-1], ()) if f.endswith("/" + key))

    def missing_with(prefix: str) -> list[str]:
        return [k for k in keys if not (os.path.isfile(k) if os.path.isabs(k) else prefix + k in files)]

    ordered = sorted(prefixes, key=lambda p: (p.count("/"), p))
    missing = {prefix: missing_with(prefix) for prefix in ordered}
    complete = [p for p in ordered if not missing[p]]
    if not complete:
        best = min(ordered, key=lambda p: (len(missing[p]), p.count("/")))
        shown = ", ".join(repr(best + k) for k in missing[best][:_SHOW])
        raise FileNotFoundError(f"{where}: {len(missing[best])} of {len(keys)} paths in column {column!r} match "
                                f"no file under {root}, e.g. {shown}.")
    tied = [p for p in complete if p.count("/") == complete[0].count("/")]
    if len(tied) > 1:
        raise ValueError(f"{where}: the paths in column {column!r} are found in several folders under {root} "
                         f"({', '.join(repr(p) for p in tied)}); make them relative to {root}.")
    return [k if os.path.isabs(k) else complete[0] + k for k in keys]


def _relative_files(root: Path) -> set[str]:
    """The posix paths, relative to ``root``, of every non-hidden file under it."""
    files = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):  # image folders are often links
        dirnames[:] = [d for d in dirnames if not _skipped(d)]
        relative = os.path.relpath(dirpath, root).replace(os.sep, "/")
        prefix = "" if relative == "." else relative + "/"
        files.update(prefix + name for name in filenames if not name.startswith("."))
    return files


def _normalise(path: str, root: Path) -> str:
    """A posix path without ``./``; absolute paths inside ``root`` become relative to it."""
    path = path.strip().replace("\\", "/")
    if os.path.isabs(path):
        try:
            return Path(path).resolve().relative_to(root).as_posix()
        except ValueError:
            return path
    return os.path.normpath(path).replace("\\", "/")


# ----------------------------------------------------------------------------------------------- CelebA
def _celeba(root: Path, attribute_file: Path, options: _Options) -> _Files:
    """CelebA as downloaded: ``list_attr_celeba.{txt,csv}``, ``list_eval_partition.{txt,csv}`` and the images."""
    columns = _read_celeba_attributes(attribute_file)
    partition_file = next((folder / name for folder in (root, root / "Eval", attribute_file.parent)
                           for name in CELEBA_PARTITION_FILES if (folder / name).is_file()), None)
    where = str(attribute_file)
    if partition_file is not None:
        if partition_file.suffix == ".txt":
            pairs = []
            for number, line in enumerate(partition_file.read_text().splitlines(), 1):
                if line.strip():
                    parts = line.split()
                    if len(parts) != 2:
                        raise ValueError(f"{partition_file}, line {number}: expected '<image> <0|1|2>', got {line!r}.")
                    pairs.append(parts)
        else:
            table = _read_table(partition_file)
            for name in ("image_id", "partition"):
                if name not in table:
                    raise _missing(str(partition_file), "column", name, list(table), "CelebA partition file")
            pairs = list(zip(table["image_id"], table["partition"]))
        partition = dict(pairs)
        unlisted = [name for name in columns["image_id"] if name not in partition]
        if unlisted:
            raise ValueError(f"{partition_file} has no partition for {len(unlisted)} images of {attribute_file.name}, "
                             f"e.g. {', '.join(unlisted[:_SHOW])}.")
        columns["partition"] = [partition[name] for name in columns["image_id"]]
        where = f"{attribute_file} (with {partition_file.name})"
    return _table(columns, root, where, options, default_split="partition", kind="attribute", signed=True)


def _read_celeba_attributes(path: Path) -> dict[str, list]:
    """``{"image_id": [...], <attribute>: [-1 or 1, ...]}`` from the txt (count, names, rows) or csv file."""
    if path.suffix == ".txt":
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        if len(lines) < 2 or not lines[0].strip().isdigit():
            raise ValueError(f"{path}: the first line must be the image count and the second the attribute names.")
        count, names, rows = int(lines[0]), lines[1].split(), [line.split() for line in lines[2:]]
        if count != len(rows):
            raise ValueError(f"{path}: the first line says {count} images but {len(rows)} are listed.")
        start = 3
    else:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            table = [row for row in csv.reader(handle) if row]
        if not table:
            raise ValueError(f"{path} is empty.")
        names, rows, start = [n.strip() for n in table[0][1:]], table[1:], 2
    values = []
    for number, row in enumerate(rows, start):
        if len(row) != len(names) + 1:
            raise ValueError(f"{path}, line {number}: {len(row) - 1} values for {len(names)} attributes.")
        try:
            values.append([int(v) for v in row[1:]])
        except ValueError as error:
            raise ValueError(f"{path}, line {number}: attribute values must be -1 or 1 ({error}).") from error
    columns: dict[str, list] = {"image_id": [row[0] for row in rows]}
    for j, name in enumerate(names):
        columns[name] = [row[j] for row in values]
    return columns


# ----------------------------------------------------------------------------------------------- columns
def _missing(where: str, what: str, name: str, names: Sequence[str], option: str) -> ValueError:
    """The error for a column (or attribute) ``name`` that ``where`` lacks, with the closest names."""
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    exact = [n for n in names if n.lower() == name.lower() and n not in close]
    close = exact + close
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(f"{where} has no {what} {name!r} ({option}).{hint} Its {what}s are: {', '.join(names)}.")


def _split_column(split_column: str | None, names: Sequence[str], default: str, where: str) -> str | None:
    if split_column is not None and split_column.strip().lower() in NO_SPLIT:
        return None
    if split_column is None:
        return default if default in names else None
    if split_column not in names:
        raise _missing(where, "column", split_column, names, "split_column")
    return split_column


def _label_column(label_column: str | None, names: Sequence[str], where: str, kind: str) -> str:
    if label_column is not None:
        if label_column not in names:
            raise _missing(where, kind, label_column, names, "label_column")
        return label_column
    found = [c for c in LABEL_COLUMNS if c in names]
    if not found:
        raise ValueError(f"{where} has no label {kind} (none of {', '.join(LABEL_COLUMNS)}); pass label_column=, "
                         f"one of: {', '.join(names)}.")
    if len(found) > 1:
        raise ValueError(f"{where} has several label {kind}s ({', '.join(found)}); pass label_column= to choose.")
    return found[0]


def _bias_column(bias_label_column: str | None, bias_csv, names: Sequence[str], where: str, kind: str) -> str | None:
    """The source column holding the bias, or ``None`` (no bias, or the bias comes from ``bias_csv``)."""
    if bias_csv is not None:
        column = bias_label_column or "bias_labels"
        if column in names:
            raise ValueError(f"Both {where} and bias_csv={os.fspath(bias_csv)!r} have a {column!r} {kind}; "
                             "drop one of them, or rename the bias_csv column and pass bias_label_column=.")
        return None
    if bias_label_column is not None:
        if bias_label_column not in names:
            raise _missing(where, kind, bias_label_column, names, "bias_label_column")
        return bias_label_column
    return "bias_labels" if "bias_labels" in names else None


def _parse_splits(values: Sequence[Any], where: str, column: str) -> list[str]:
    """``train`` / ``validation`` / ``test`` for each value of a split column."""
    splits, unknown = [], []
    for value in values:
        key = "" if value is None else str(value).strip().lower()
        if re.fullmatch(r"[0-2]\.0*", key):
            key = key[0]
        split = SPLIT_ALIASES.get(key)
        if split is None and value not in unknown:
            unknown.append(value)
        splits.append(split)
    if unknown:
        raise ValueError(f"{where}: the split column {column!r} has values that name no split: "
                         f"{', '.join(repr(v) for v in unknown[:_SHOW])}. Accepted: train / training, val / valid / "
                         "validation / dev, test / testing, or 0 / 1 / 2 (= train / validation / test); "
                         "split_column='none' ignores the column.")
    return splits


def _encode(values: Sequence[Any], column: str, where: str, signed: bool = False,
            rows: Sequence[str] | None = None) -> _Labels:
    """Class ids 0..K-1 and names: integers 0..K-1 are kept (K = max + 1, names ``str(i)``); -1/1 (binary
    attributes) become 0/1 named ``not_<column>`` / ``<column>``; booleans 0/1 named ``False`` / ``True``;
    anything else is named by its text and numbered in sorted order."""
    empty = [i for i, v in enumerate(values) if v is None or (isinstance(v, float) and v != v)
             or (isinstance(v, str) and not v.strip())]
    if empty:
        named = [rows[i] if rows is not None else f"row {i + 1}" for i in empty[:_SHOW]]
        raise ValueError(f"{where}: column {column!r} has no value for {len(empty)} images, e.g. {', '.join(named)}.")
    marked = [i for i, v in enumerate(values) if isinstance(v, str) and v.strip() in MISSING_MARKERS]
    if marked:  # what pandas / numpy write for a missing value: never a class of its own
        named = [f"{rows[i] if rows is not None else f'row {i + 1}'} ({values[i].strip()!r})" for i in marked[:_SHOW]]
        raise ValueError(f"{where}: column {column!r} marks {len(marked)} values as missing, e.g. {', '.join(named)}; "
                         "give every image a class (or drop those rows).")
    if all(isinstance(v, bool) for v in values):
        return _Labels([int(v) for v in values], ["False", "True"])
    ints = _as_ints(values)
    if ints is not None:
        present = set(ints)
        if signed or (-1 in present and present <= {-1, 1}):
            if not present <= {-1, 1}:
                raise ValueError(f"{where}: column {column!r} must hold -1 / 1, but has "
                                 f"{sorted(present - {-1, 1})[:_SHOW]}.")
            return _Labels([(v + 1) // 2 for v in ints], [f"not_{column}", column])
        if min(present) < 0:
            negative = sorted(v for v in present if v < 0)[:_SHOW]
            raise ValueError(f"{where}: column {column!r} has negative values {negative}"
                             "; class ids must be 0..K-1 (or -1 / 1 for a binary attribute).")
        n_classes = max(present) + 1
        if n_classes > 10 and len(present) < n_classes / 2:
            warnings.warn(f"{where}: column {column!r} holds {len(present)} distinct values up to {n_classes - 1}; "
                          f"it is read as {n_classes} classes (ids 0..{n_classes - 1}).", stacklevel=5)
        return _Labels(ints, [str(i) for i in range(n_classes)])
    numbers = [i for i, v in enumerate(values) if _as_ints([v]) is not None]
    if len(numbers) * 2 >= len(values):  # integer class ids with a few stray values (0.5, 1e3, 'x')
        stray = [i for i, v in enumerate(values) if _as_ints([v]) is None]
        named = [f"{rows[i] if rows is not None else f'row {i + 1}'} ({values[i]!r})" for i in stray[:_SHOW]]
        raise ValueError(f"{where}: column {column!r} holds integer class ids, but {len(stray)} values are not "
                         f"integers, e.g. {', '.join(named)}.")
    text = [str(v).strip() for v in values]
    names = sorted(set(text))
    index = {name: i for i, name in enumerate(names)}
    return _Labels([index[t] for t in text], names)


def _as_ints(values: Sequence[Any]) -> list[int] | None:
    """The values as ints when every one is an integer (int, integral float, or its text), else ``None``."""
    out = []
    for value in values:
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            out.append(value)
        elif isinstance(value, float) and value.is_integer():
            out.append(int(value))
        elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+(\.0*)?\s*", value):
            out.append(int(float(value)))
        else:
            return None
    return out


# ----------------------------------------------------------------------------------------------- bias table
def _bias_from_table(path: Path, files: _Files, column: str, image_column: str | None) -> _Labels:
    """The bias label of every image from a table matched by the path relative to the dataset root (a shorter
    path suffix, such as the file name, only when it names one image)."""
    if not path.is_file():
        raise FileNotFoundError(f"bias_csv {path} does not exist.")
    where = f"bias_csv {path}"
    table = _read_table(path)
    names = list(table)
    key_column = image_column if image_column in table else next((c for c in PATH_COLUMNS if c in table), None)
    if key_column is None:
        raise ValueError(f"{where} has no image path column (none of {', '.join(PATH_COLUMNS)}); its columns are "
                         f"{', '.join(names)}.")
    if column not in table:
        raise _missing(where, "column", column, names, "bias_label_column")
    position = {p: i for i, p in enumerate(files.paths)}
    suffixes: dict[str, list[int]] = defaultdict(list)
    for i, relative in enumerate(files.paths):
        parts = relative.split("/")
        for k in range(1, len(parts)):
            suffixes["/".join(parts[k:])].append(i)
    row_of: dict[int, int] = {}
    unmatched, ambiguous, duplicates = [], [], []
    unit, offset = ("lines", 2) if path.suffix.lower() in (".csv", ".tsv") else ("rows", 1)  # as an editor shows them
    for row, raw in enumerate(table[key_column]):
        key = _normalise(str(raw), files.root)
        hits = [position[key]] if key in position else suffixes.get(key, [])
        if not hits:
            unmatched.append(key)
        elif len(hits) > 1:
            more = ", ..." if len(hits) > 3 else ""
            ambiguous.append(f"{key!r} ({', '.join(files.paths[h] for h in hits[:3])}{more})")
        elif hits[0] in row_of:
            duplicates.append(f"{key!r} ({unit} {row_of[hits[0]] + offset} and {row + offset}: {files.paths[hits[0]]})")
        else:
            row_of[hits[0]] = row
    if unmatched:
        raise ValueError(f"{where}: {len(unmatched)} rows match no image of {files.where}, e.g. "
                         f"{', '.join(repr(k) for k in unmatched[:_SHOW])}; paths are relative to the dataset root "
                         f"{files.root} (like {files.paths[0]!r}).")
    if ambiguous:
        raise ValueError(f"{where}: {len(ambiguous)} paths in column {key_column!r} match several images, e.g. "
                         f"{', '.join(ambiguous[:_SHOW])}; give the path relative to the dataset root {files.root}.")
    if duplicates:
        raise ValueError(f"{where} has {len(duplicates)} duplicate rows for the same image, e.g. "
                         f"{', '.join(duplicates[:_SHOW])}.")
    without = [p for i, p in enumerate(files.paths) if i not in row_of]
    if without:
        raise ValueError(f"{where} has no row for {len(without)} of {len(files.paths)} images, e.g. "
                         f"{', '.join(without[:_SHOW])}.")
    return _encode([table[column][row_of[i]] for i in range(len(files.paths))], column, where, rows=files.paths)


# ----------------------------------------------------------------------------------------------- results
def _finish(files: _Files) -> datasets.DatasetDict:
    """The ``DatasetDict`` of a file-based dataset."""
    import datasets

    splits = files.splits
    if splits is None:
        reason = "; ".join(files.notes) or "no split column, split folders or partition file"
        warnings.warn(f"{files.where} has no split information ({reason}): all {len(files.paths)} images are in "
                      "'train'; hold out evaluation data yourself.", stacklevel=3)
        splits = ["train"] * len(files.paths)
    features = {"image": datasets.Image(), "labels": datasets.ClassLabel(names=files.labels.names)}
    if files.bias is not None:
        features["bias_labels"] = datasets.ClassLabel(names=files.bias.names)
    features["image_path"] = datasets.Value("string")
    result = {}
    for split in SPLITS:
        rows = [i for i, s in enumerate(splits) if s == split]
        if not rows:
            continue
        data = {"image": [os.path.join(files.root, files.paths[i]) for i in rows],
                "labels": [files.labels.ids[i] for i in rows]}
        if files.bias is not None:
            data["bias_labels"] = [files.bias.ids[i] for i in rows]
        data["image_path"] = [files.paths[i] for i in rows]
        result[split] = datasets.Dataset.from_dict(data, features=datasets.Features(features))
    return _checked(datasets.DatasetDict(result), files.where)


def _checked(result: datasets.DatasetDict, where: str) -> datasets.DatasetDict:
    if "train" not in result:
        raise ValueError(f"{where} has no training images; its splits are {', '.join(result) or 'none'}.")
    for name, split in result.items():
        if len(split) == 0:
            raise ValueError(f"The {name} split of {where} is empty.")
    features = result["train"].features
    bias = features.get("bias_labels")
    logger.info("%s: %s; %d classes (%s)%s.", where, ", ".join(f"{n} {len(s)}" for n, s in result.items()),
                features["labels"].num_classes, ", ".join(features["labels"].names[:10]),
                f"; bias with {bias.num_classes} values ({', '.join(bias.names[:10])})" if bias else "")
    return result


# ----------------------------------------------------------------------------------------------- Hub datasets
def _from_datasets(dataset, where: str, options: _Options) -> datasets.DatasetDict:
    """A ``Dataset`` / ``DatasetDict`` from the Hub, a local Hub repo folder, a parquet file or ``save_to_disk``."""
    import datasets

    split_column = options.split_column
    if options.bias_csv is not None:
        raise ValueError(f"bias_csv applies to datasets of image files; {where} stores its images inside its "
                         "data files: add the bias as a column and pass bias_label_column=.")
    if isinstance(dataset, datasets.Dataset):
        dataset = datasets.DatasetDict({"train": dataset})
    if not isinstance(dataset, datasets.DatasetDict):
        raise ValueError(f"{where} loaded as {type(dataset).__name__}, not a DatasetDict.")
    first = next(iter(dataset.values()))
    names, features = first.column_names, first.features
    split_name = _split_column(split_column, names, "split", where)
    if split_name is not None and len(dataset) > 1:
        if split_column is not None:
            raise ValueError(f"{where} already has the splits {', '.join(dataset)}; split_column={split_column!r} "
                             "cannot split them again (pass split_column='none').")
        warnings.warn(f"{where} has the splits {', '.join(dataset)}: they are used, and its 'split' column is not.",
                      stacklevel=4)
        split_name = None
    of_row = None  # with a split column: the split of each row of the one source split
    if split_name is not None:
        only = next(iter(dataset.values()))
        of_row = _parse_splits(list(only[split_name]), where, split_name)
        parts = {"all": only}  # converted whole, split last: selecting first would copy every image
    else:
        parts, unknown = {}, []
        for name, split in dataset.items():
            target = SPLIT_ALIASES.get(name.lower())
            if target is None:
                unknown.append(name)
            elif target in parts:
                both = [n for n in dataset if SPLIT_ALIASES.get(n.lower()) == target]
                raise ValueError(f"{where} has two splits for {target}: {', '.join(both)}.")
            else:
                parts[target] = split
        if unknown:
            raise ValueError(f"{where} has splits that are none of train / validation (val, valid, dev) / test: "
                             f"{', '.join(unknown)} (all: {', '.join(dataset)}).")
        parts = {s: parts[s] for s in SPLITS if s in parts}
    image_name = _hub_image_column(options.image_column, names, features, where)
    values = [c for c in names if c not in (image_name, split_name)]
    label_name = _label_column(options.label_column, values, where, "column")
    bias_name = _bias_column(options.bias_label_column, None, values, where, "column")
    if bias_name == label_name:
        raise ValueError(f"{where}: label_column and bias_label_column are both {label_name!r}.")
    targets = {image_name: "image", label_name: "labels"}
    if bias_name is not None:
        targets[bias_name] = "bias_labels"
    classes = {target: _hub_classes(parts, source, features[source], where)
               for source, target in targets.items() if target != "image"}
    result = {}
    for key, part in parts.items():
        part = part.select_columns(list(targets))
        part = part.rename_columns({source: f"__hf_debias_{target}" for source, target in targets.items()})
        part = part.rename_columns({f"__hf_debias_{target}": target for target in targets.values()})
        for target, (ids, names_) in classes.items():
            if ids is not None:  # a plain column: replaced by its ids (no cast, which would rewrite every image)
                part = part.remove_columns(target).add_column(target, ids[key],
                                                              feature=datasets.ClassLabel(names=names_))
        if not isinstance(part.features["image"], datasets.Image):
            part = part.cast_column("image", datasets.Image())
        result[key] = part
    if of_row is not None:
        result = {s: result["all"].select([i for i, x in enumerate(of_row) if x == s]) for s in SPLITS if s in of_row}
    if list(result) == ["train"]:
        warnings.warn(f"{where} has only a train split: hold out evaluation data yourself.", stacklevel=4)
    return _checked(datasets.DatasetDict(result), where)


def _hub_image_column(image_column: str | None, names: Sequence[str], features, where: str) -> str:
    import datasets

    if image_column is not None:
        if image_column not in names:
            raise _missing(where, "column", image_column, names, "image_column")
        name = image_column
    else:
        images = [c for c in names if isinstance(features[c], datasets.Image)]
        if len(images) > 1:
            images = [c for c in HUB_IMAGE_COLUMNS if c in images] or images
            if len(images) > 1:
                raise ValueError(f"{where} has several image columns ({', '.join(images)}); pass image_column=.")
        name = images[0] if images else next((c for c in HUB_IMAGE_COLUMNS if c in names), None)
        if name is None:
            raise ValueError(f"{where} has no image column (an Image feature, or one of "
                             f"{', '.join(HUB_IMAGE_COLUMNS)}); its columns are {', '.join(names)}. "
                             "Pass image_column=.")
    feature = features[name]
    if not (isinstance(feature, datasets.Image) or (isinstance(feature, dict) and {"bytes", "path"} <= set(feature))):
        raise ValueError(f"{where}: column {name!r} holds {feature}, not images; pass image_column=.")
    return name


def _hub_classes(parts: dict, column: str, feature, where: str) -> tuple[dict[str, list[int]] | None, list[str]]:
    """``(None, names)`` for a ClassLabel column (ids checked), else ``({part: ids}, names)`` encoded over all
    parts together."""
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        for split, part in parts.items():
            ids = list(part[column])
            bad = sorted({i for i in ids if not 0 <= i < feature.num_classes})
            if bad:
                part_name = "" if split == "all" else f" in the {split} split"
                raise ValueError(f"{where}: column {column!r} has ids {bad[:_SHOW]}{part_name}, outside 0.."
                                 f"{feature.num_classes - 1} (-1 marks unlabelled rows); use labelled splits only.")
        return None, list(feature.names)
    if not isinstance(feature, datasets.Value):
        raise ValueError(f"{where}: column {column!r} holds {feature}, not one class per image.")
    values = {split: list(part[column]) for split, part in parts.items()}
    encoded = _encode([v for split in values.values() for v in split], column, where)
    ids, start = {}, 0
    for split, split_values in values.items():
        ids[split] = encoded.ids[start:start + len(split_values)]
        start += len(split_values)
    return ids, encoded.names
