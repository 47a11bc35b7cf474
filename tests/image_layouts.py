"""Tiny synthetic image datasets written exactly as the public downloads are laid out (8x8 images), for tests.

Each ``write_*`` function writes one layout under ``root`` and returns the folder to hand to
``hf_debias.data.load_image_dataset``. The ground truth of every image comes from a small public function
(``waterbirds_rows``, ``celeba_attribute``, ``class_folder_bias``, ``metadata_rows``, ``hub_repo_rows``), so tests
can assert the label and bias label of named images. Import as ``from image_layouts import ...`` (like
``hub_cache``)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

SIZE = 8


def _write_image(path: Path, seed: int) -> None:
    """An 8x8 RGB image whose colour depends on ``seed`` (PNG or JPEG from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = ((seed * 53) % 256, (seed * 97 + 40) % 256, (seed * 29 + 80) % 256)
    Image.new("RGB", (SIZE, SIZE), colour).save(path)


# --------------------------------------------------------------------------------------------- Waterbirds
WATERBIRDS_DIR = "waterbird_complete95_forest2water2"
#: CUB species folders: (folder, file-name stem, y) with y = 1 for waterbirds, as in the real metadata.csv.
WATERBIRDS_SPECIES = (("001.Black_footed_Albatross", "Black_Footed_Albatross", 1),
                      ("013.Bobolink", "Bobolink", 0),
                      ("045.Northern_Fulmar", "Northern_Fulmar", 1),
                      ("029.American_Crow", "American_Crow", 0))
WATERBIRDS_COLUMNS = ("img_id", "img_filename", "y", "split", "place", "place_filename")


def waterbirds_rows(n_per_group: int = 2) -> list[dict]:
    """The rows of ``metadata.csv`` that ``write_waterbirds`` writes, in file order.

    For each split (0 = train, 1 = validation, 2 = test), each bird type ``y`` and each background ``place``
    (0 = land, 1 = water) there are ``n_per_group`` images, so every split holds ``4 * n_per_group`` images.
    ``img_id`` counts from 1; the species alternates with it between the two species of the bird type."""
    rows, img_id = [], 0
    for split in (0, 1, 2):
        for y in (0, 1):
            species = [s for s in WATERBIRDS_SPECIES if s[2] == y]
            for place in (0, 1):
                for i in range(n_per_group):
                    img_id += 1
                    folder, stem, _ = species[img_id % 2]
                    scene = ("b/bamboo_forest", "o/ocean")[place]
                    filename = f"{folder}/{stem}_{img_id:04d}_{700000 + img_id}.jpg"
                    rows.append({"img_id": img_id, "img_filename": filename,
                                 "y": y, "split": split, "place": place,
                                 "place_filename": f"/{scene}/{img_id:08d}.jpg"})
    return rows


def write_waterbirds(root: str | Path, n_per_group: int = 2) -> Path:
    """Write Waterbirds as downloaded: ``root/waterbird_complete95_forest2water2/`` with CUB species folders
    (``001.Black_footed_Albatross/Black_Footed_Albatross_0001_700001.jpg`` ...) and ``metadata.csv`` with the
    columns ``img_id,img_filename,y,split,place,place_filename`` (split 0/1/2). Returns the dataset folder."""
    folder = Path(root) / WATERBIRDS_DIR
    rows = waterbirds_rows(n_per_group)
    lines = [",".join(WATERBIRDS_COLUMNS)]
    for row in rows:
        _write_image(folder / row["img_filename"], row["img_id"])
        lines.append(",".join(str(row[c]) for c in WATERBIRDS_COLUMNS))
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    return folder


# --------------------------------------------------------------------------------------------- CelebA
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young")


def celeba_attribute(index: int, name: str) -> int:
    """The value (-1 or 1) of attribute ``name`` for image number ``index`` (1-based, ``000001.jpg`` is 1).

    ``Blond_Hair`` is 1 for every third image (3, 6, 9, ...), ``Male`` for every odd image; other attributes
    follow a fixed pattern."""
    if name == "Blond_Hair":
        return 1 if index % 3 == 0 else -1
    if name == "Male":
        return 1 if index % 2 == 1 else -1
    j = CELEBA_ATTRIBUTES.index(name)
    return 1 if (index * (j + 3)) % 5 == 0 else -1


def celeba_partition(index: int, n_images: int = 20) -> int:
    """The partition (0 = train, 1 = validation, 2 = test) of image ``index``: the first 60 % train, then
    20 % validation, then the rest test, in file order as in the real ``list_eval_partition``."""
    n_train, n_val = int(0.6 * n_images), int(0.2 * n_images)
    return 0 if index <= n_train else 1 if index <= n_train + n_val else 2


def write_celeba(root: str | Path, fmt: str = "txt", n_images: int = 20) -> Path:
    """Write CelebA as downloaded into ``root/celeba`` and return that folder.

    ``fmt="txt"`` is the official (Google Drive / torchvision) layout: ``img_align_celeba/000001.jpg``,
    ``list_attr_celeba.txt`` (first line the image count, second line the 40 attribute names, then
    ``000001.jpg -1  1 ...`` with runs of spaces) and ``list_eval_partition.txt`` (``000001.jpg 0``).
    ``fmt="csv"`` is the Kaggle layout: ``img_align_celeba/img_align_celeba/000001.jpg``, ``list_attr_celeba.csv``
    (``image_id,5_o_Clock_Shadow,...``) and ``list_eval_partition.csv`` (``image_id,partition``)."""
    if fmt not in ("txt", "csv"):
        raise ValueError(f"fmt must be 'txt' or 'csv', not {fmt!r}")
    folder = Path(root) / "celeba"
    images = folder / "img_align_celeba"
    if fmt == "csv":
        images = images / "img_align_celeba"
    names = [f"{i:06d}.jpg" for i in range(1, n_images + 1)]
    for i, name in enumerate(names, 1):
        _write_image(images / name, i)
    values = {name: [celeba_attribute(i, a) for a in CELEBA_ATTRIBUTES] for i, name in enumerate(names, 1)}
    partition = {name: celeba_partition(i, n_images) for i, name in enumerate(names, 1)}
    if fmt == "txt":
        lines = [str(n_images), " ".join(CELEBA_ATTRIBUTES) + " "]
        lines += [name + "".join(f" {v:2d}" for v in values[name]) for name in names]
        (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
        (folder / "list_eval_partition.txt").write_text("".join(f"{n} {partition[n]}\n" for n in names))
    else:
        lines = ["image_id," + ",".join(CELEBA_ATTRIBUTES)]
        lines += [name + "," + ",".join(str(v) for v in values[name]) for name in names]
        (folder / "list_attr_celeba.csv").write_text("\n".join(lines) + "\n")
        (folder / "list_eval_partition.csv").write_text(
            "image_id,partition\n" + "".join(f"{n},{partition[n]}\n" for n in names))
    return folder


# --------------------------------------------------------------------------------------------- class folders
#: Images per class and split folder; the validation split has no "dog" images at all.
CLASS_FOLDER_COUNTS = {"train": {"bird": 4, "cat": 4, "dog": 4}, "val": {"bird": 2, "cat": 2},
                       "test": {"bird": 2, "cat": 2, "dog": 2}}
BIAS_CSV_NAME = "bias_labels.csv"


def class_folder_bias(split: str, cls: str, index: int) -> int:
    """The bias label (0 or 1) of ``<split>/<cls>/<index:04d>.png``: images with the same file name in
    different class folders get different bias labels (``cat/0000.png`` is 1, ``dog/0000.png`` is 0 ...)."""
    return (index + ("bird", "cat", "dog").index(cls) + ("train", "val", "test").index(split)) % 2


def write_class_folders(root: str | Path, splits: bool = True, bias_csv: bool = True) -> Path:
    """Write an image folder with class sub-folders and return it: with ``splits``,
    ``root/images/{train,val,test}/{bird,cat,dog}/0000.png ...`` (counts in ``CLASS_FOLDER_COUNTS``; ``val`` has
    no ``dog`` folder), else the train counts as ``root/images/{bird,cat,dog}/0000.png``. File names repeat
    across class folders. With ``bias_csv``, ``root/images/bias_labels.csv`` (``BIAS_CSV_NAME``) has the columns
    ``file_name,bias_labels`` with paths relative to the dataset folder (``train/cat/0000.png``; ``cat/0000.png``
    without splits) and the value of ``class_folder_bias``."""
    folder = Path(root) / "images"
    rows = []
    for split, counts in CLASS_FOLDER_COUNTS.items() if splits else [("train", CLASS_FOLDER_COUNTS["train"])]:
        for cls, count in counts.items():
            for index in range(count):
                relative = f"{split}/{cls}/{index:04d}.png" if splits else f"{cls}/{index:04d}.png"
                _write_image(folder / relative, len(rows))
                rows.append((relative, class_folder_bias(split, cls, index)))
    if bias_csv:
        (folder / BIAS_CSV_NAME).write_text("file_name,bias_labels\n" + "".join(f"{p},{b}\n" for p, b in rows))
    return folder


# --------------------------------------------------------------------------------------------- metadata table
METADATA_CLASSES = ("cat", "dog")


def metadata_rows() -> list[dict]:
    """The rows ``write_metadata_table`` writes: 16 images ``images/0000.png`` ... with a string ``label``
    (``cat``/``dog``), a string bias ``background`` (``indoor``/``outdoor``), a ``split`` column named
    ``train`` (10 rows), ``val`` (3) and ``test`` (3), and an unrelated ``photographer`` column."""
    rows = []
    for i in range(16):
        split = "train" if i < 10 else "val" if i < 13 else "test"
        rows.append({"file_name": f"images/{i:04d}.png", "label": METADATA_CLASSES[i % 2],
                     "background": ("indoor", "outdoor")[(i // 2) % 2], "split": split,
                     "photographer": f"person {i % 3}"})
    return rows


def write_metadata_table(root: str | Path, fmt: str = "csv") -> Path:
    """Write images plus one metadata table next to them (``root/table/metadata.<fmt>``, fmt one of ``csv``,
    ``tsv``, ``jsonl``, ``parquet``; the rows of ``metadata_rows``) and return the dataset folder."""
    folder = Path(root) / "table"
    rows = metadata_rows()
    for i, row in enumerate(rows):
        _write_image(folder / row["file_name"], i)
    columns = list(rows[0])
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        text = sep.join(columns) + "\n" + "".join(sep.join(str(r[c]) for c in columns) + "\n" for r in rows)
        (folder / f"metadata.{fmt}").write_text(text)
    elif fmt == "jsonl":
        (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), folder / "metadata.parquet")
    else:
        raise ValueError(f"fmt must be one of csv, tsv, jsonl, parquet, not {fmt!r}")
    return folder


# --------------------------------------------------------------------------------------------- Hub repo folder
HUB_REPO_CLASSES = ("airplane", "automobile", "bird")
HUB_REPO_SPLITS = {"train": 9, "validation": 2, "test": 6}


def hub_repo_rows(split: str) -> list[dict]:
    """Ground truth of ``write_parquet_hub_repo``'s split ``split``: a ``label`` id (``i % 3``, names
    ``HUB_REPO_CLASSES``) and an integer bias ``place`` (``(i // 3) % 2``) for row ``i``. The validation split
    has 2 rows, so it lacks the class ``bird``."""
    return [{"label": i % 3, "place": (i // 3) % 2} for i in range(HUB_REPO_SPLITS[split])]


def write_parquet_hub_repo(root: str | Path) -> Path:
    """Write a local clone of a Hub dataset repo and return it: ``root/hub_repo/data/<split>-00000-of-00001.parquet``
    for ``train``, ``validation`` and ``test`` (``image``: an ``Image`` struct with PNG bytes, ``label``: a
    ``ClassLabel`` with names ``HUB_REPO_CLASSES``, ``place``: int), plus a ``README.md`` with ``dataset_info``."""
    import io

    import datasets

    folder = Path(root) / "hub_repo"
    (folder / "data").mkdir(parents=True, exist_ok=True)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(HUB_REPO_CLASSES)),
                                  "place": datasets.Value("int64")})
    for split in HUB_REPO_SPLITS:
        rows = hub_repo_rows(split)
        images = []
        for i in range(len(rows)):
            buffer = io.BytesIO()
            colour = ((i * 53) % 256, (i * 97) % 256, 30)
            Image.new("RGB", (SIZE, SIZE), colour).save(buffer, format="PNG")
            images.append({"bytes": buffer.getvalue(), "path": None})
        table = datasets.Dataset.from_dict({"image": images, "label": [r["label"] for r in rows],
                                            "place": [r["place"] for r in rows]}, features=features)
        table.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    names = "\n".join(f"          '{i}': {name}" for i, name in enumerate(HUB_REPO_CLASSES))
    split_info = "\n".join(f"  - name: {s}\n    num_bytes: {100 * n}\n    num_examples: {n}"
                           for s, n in HUB_REPO_SPLITS.items())
    data_files = "\n".join(f"  - split: {s}\n    path: data/{s}-*" for s in HUB_REPO_SPLITS)
    (folder / "README.md").write_text(
        "---\ndataset_info:\n  features:\n  - name: image\n    dtype: image\n  - name: label\n    dtype:\n"
        f"      class_label:\n        names:\n{names}\n  - name: place\n    dtype: int64\n  splits:\n{split_info}\n"
        f"configs:\n- config_name: default\n  data_files:\n{data_files}\n---\n# A tiny image dataset\n")
    return folder


def write_concept_folders(root: str | Path, n_per_folder: int = 12) -> tuple[Path, Path]:
    """Two folders of 16x16 noise images for ``hf-debias cav --concept-dir / --clean-dir``: ``with/`` has a
    bright 5x5 corner (the concept), ``without/`` a dark one. Returns ``(with, without)``."""
    import numpy as np

    rng = np.random.default_rng(0)
    folders = []
    for folder, brightness in (("with", 200), ("without", 20)):
        path = Path(root) / folder
        path.mkdir(parents=True)
        for index in range(n_per_folder):
            pixels = rng.integers(0, 40, (16, 16, 3)).astype("uint8")
            pixels[:5, :5] = brightness
            Image.fromarray(pixels).save(path / f"{index}.png")
        folders.append(path)
    return folders[0], folders[1]
