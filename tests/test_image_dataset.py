"""``load_image_dataset`` on each public layout, written exactly as downloaded (tiny images, offline)."""

import shutil
import warnings

import datasets
import pytest
from image_layouts import (BIAS_CSV_NAME, CLASS_FOLDER_COUNTS, HUB_REPO_CLASSES, HUB_REPO_SPLITS, celeba_attribute,
                           class_folder_bias, hub_repo_rows, metadata_rows, waterbirds_rows, write_celeba,
                           write_class_folders, write_metadata_table, write_parquet_hub_repo, write_waterbirds)
from PIL import Image

from hf_debias.data import load_image_dataset

COLUMNS = ["image", "labels", "bias_labels", "image_path"]


def by_path(dataset: datasets.DatasetDict) -> dict[str, tuple[str, int, int]]:
    """``{image_path: (split, label, bias label)}`` over all splits."""
    return {path: (split, label, bias) for split, part in dataset.items()
            for path, label, bias in zip(part["image_path"], part["labels"], part["bias_labels"])}


# ------------------------------------------------------------------------------------------- Waterbirds
def test_waterbirds_as_downloaded(tmp_path):
    root = write_waterbirds(tmp_path, n_per_group=2)
    dataset = load_image_dataset(root, label_column="y", bias_label_column="place")
    assert {name: len(part) for name, part in dataset.items()} == {"train": 8, "validation": 8, "test": 8}
    assert dataset["train"].column_names == COLUMNS
    assert dataset["train"].features["labels"].names == ["0", "1"]
    assert dataset["train"].features["bias_labels"].names == ["0", "1"]
    rows = by_path(dataset)
    # named images: a waterbird on land in test, a landbird on water in validation
    assert rows["045.Northern_Fulmar/Northern_Fulmar_0021_700021.jpg"] == ("test", 1, 0)
    assert rows["013.Bobolink/Bobolink_0012_700012.jpg"] == ("validation", 0, 1)
    split_names = ("train", "validation", "test")
    assert rows == {r["img_filename"]: (split_names[r["split"]], r["y"], r["place"]) for r in waterbirds_rows(2)}
    image = dataset["test"][0]["image"]
    assert isinstance(image, Image.Image) and image.size == (8, 8)


def test_waterbirds_split_column_none_puts_everything_in_train_with_a_warning(tmp_path):
    root = write_waterbirds(tmp_path, n_per_group=1)
    with pytest.warns(UserWarning, match="no split information"):
        dataset = load_image_dataset(root, label_column="y", bias_label_column="place", split_column="none")
    assert list(dataset) == ["train"] and len(dataset["train"]) == 12


# ------------------------------------------------------------------------------------------- CelebA
@pytest.mark.parametrize("fmt", ["txt", "csv"])
def test_celeba_as_downloaded(tmp_path, fmt):
    root = write_celeba(tmp_path, fmt=fmt, n_images=20)
    dataset = load_image_dataset(root, label_column="Blond_Hair", bias_label_column="Male")
    assert {name: len(part) for name, part in dataset.items()} == {"train": 12, "validation": 4, "test": 4}
    assert dataset["train"].column_names == COLUMNS
    assert dataset["train"].features["labels"].names == ["not_Blond_Hair", "Blond_Hair"]
    assert dataset["train"].features["bias_labels"].names == ["not_Male", "Male"]
    folder = "img_align_celeba/" if fmt == "txt" else "img_align_celeba/img_align_celeba/"
    rows = by_path(dataset)
    assert rows[folder + "000003.jpg"] == ("train", 1, 1)  # blond (every third), male (odd)
    assert rows[folder + "000004.jpg"] == ("train", 0, 0)
    assert rows[folder + "000015.jpg"] == ("validation", 1, 1)
    assert rows[folder + "000018.jpg"] == ("test", 1, 0)
    for i in range(1, 21):  # -1 -> 0, 1 -> 1 for every image
        _, label, bias = rows[f"{folder}{i:06d}.jpg"]
        assert (label, bias) == ((celeba_attribute(i, "Blond_Hair") + 1) // 2, (celeba_attribute(i, "Male") + 1) // 2)


def test_celeba_attribute_that_does_not_exist_names_the_closest(tmp_path):
    root = write_celeba(tmp_path, fmt="txt", n_images=6)
    with pytest.raises(ValueError, match=r"no attribute 'Blonde_Hair' \(label_column\)\. Did you mean 'Blond_Hair'"):
        load_image_dataset(root, label_column="Blonde_Hair", bias_label_column="Male")
    with pytest.raises(ValueError, match=r"no attribute 'male'.*Did you mean 'Male'"):
        load_image_dataset(root, label_column="Blond_Hair", bias_label_column="male")


def test_celeba_without_partition_file_is_train_only_and_says_so(tmp_path):
    root = write_celeba(tmp_path, fmt="txt", n_images=6)
    (root / "list_eval_partition.txt").unlink()
    with pytest.warns(UserWarning, match="no split information"):
        dataset = load_image_dataset(root, label_column="Smiling")
    assert list(dataset) == ["train"] and len(dataset["train"]) == 6
    assert "bias_labels" not in dataset["train"].column_names


def test_celeba_truncated_attribute_file_is_an_error(tmp_path):
    root = write_celeba(tmp_path, fmt="txt", n_images=6)
    attributes = root / "list_attr_celeba.txt"
    attributes.write_text("\n".join(attributes.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(ValueError, match="says 6 images but 5 are listed"):
        load_image_dataset(root, label_column="Smiling")


# ------------------------------------------------------------------------------------------- class folders
def test_class_folders_with_split_folders_and_a_bias_csv_whose_names_repeat(tmp_path):
    root = write_class_folders(tmp_path, splits=True, bias_csv=True)
    dataset = load_image_dataset(root, bias_csv=root / BIAS_CSV_NAME)
    assert {name: len(part) for name, part in dataset.items()} == {"train": 12, "validation": 4, "test": 6}
    assert dataset["train"].column_names == COLUMNS
    for part in dataset.values():  # the validation split has no dog, yet every split knows 3 classes
        assert part.features["labels"].names == ["bird", "cat", "dog"]
        assert part.features["labels"].num_classes == 3
    assert set(dataset["validation"]["labels"]) == {0, 1}
    rows = by_path(dataset)
    assert rows["train/cat/0000.png"] == ("train", 1, 1)
    assert rows["train/dog/0000.png"] == ("train", 2, 0)  # same file name, its own bias label
    assert rows["val/cat/0001.png"] == ("validation", 1, 1)
    expected = {f"{split}/{cls}/{i:04d}.png": (("train", "validation", "test")[k], ["bird", "cat", "dog"].index(cls),
                                               class_folder_bias(split, cls, i))
                for k, (split, counts) in enumerate(CLASS_FOLDER_COUNTS.items()) for cls, n in counts.items()
                for i in range(n)}
    assert rows == expected
    # the layout does exercise the old bug: matching by basename would give many images a wrong bias label
    first_by_name = {}
    for path, (_, _, bias) in rows.items():
        first_by_name.setdefault(path.rsplit("/", 1)[-1], bias)
    assert sum(bias != first_by_name[path.rsplit("/", 1)[-1]] for path, (_, _, bias) in rows.items()) >= 8


def test_class_folders_without_splits(tmp_path):
    root = write_class_folders(tmp_path, splits=False, bias_csv=True)
    with pytest.warns(UserWarning, match="all 12 images are in 'train'"):
        dataset = load_image_dataset(root, bias_csv=root / BIAS_CSV_NAME)
    assert list(dataset) == ["train"]
    rows = by_path(dataset)
    assert rows["cat/0000.png"] == ("train", 1, class_folder_bias("train", "cat", 0))
    assert rows["dog/0000.png"] == ("train", 2, class_folder_bias("train", "dog", 0))


def test_bias_csv_bare_basenames_only_when_unique(tmp_path):
    root = tmp_path / "pets"
    for path in ("cat/a.png", "dog/b.png"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(root / path)
    (tmp_path / "bias.csv").write_text("image,background\na.png,indoor\nb.png,outdoor\n")
    with pytest.warns(UserWarning, match="no split information"):
        dataset = load_image_dataset(root, bias_csv=tmp_path / "bias.csv", bias_label_column="background")
    assert by_path(dataset) == {"cat/a.png": ("train", 0, 0), "dog/b.png": ("train", 1, 1)}
    assert dataset["train"].features["bias_labels"].names == ["indoor", "outdoor"]
    repeated = write_class_folders(tmp_path / "repeated", splits=False, bias_csv=False)
    (tmp_path / "names.csv").write_text("file_name,bias_labels\n" + "".join(
        f"{i:04d}.png,0\n" for i in range(4)))
    with pytest.raises(ValueError, match=r"4 paths in column 'file_name' match several images, e.g. '0000.png' "
                                         r"\(bird/0000.png, cat/0000.png, dog/0000.png\)"):
        load_image_dataset(repeated, bias_csv=tmp_path / "names.csv")


def test_bias_csv_errors_name_the_offending_rows(tmp_path):
    root = write_class_folders(tmp_path, splits=True, bias_csv=True)
    lines = (root / BIAS_CSV_NAME).read_text().splitlines()
    bad = tmp_path / "bad.csv"

    bad.write_text("\n".join(lines + [lines[3]]) + "\n")  # a duplicate row
    with pytest.raises(ValueError, match=r"1 duplicate rows for the same image, e.g. 'train/bird/0002.png' "
                                         r"\(lines 4 and 24"):
        load_image_dataset(root, bias_csv=bad)
    bad.write_text("\n".join(lines + ["train/cat/9999.png,1"]) + "\n")  # a row matching no image
    with pytest.raises(ValueError, match=r"1 rows match no image .* e\.g\. 'train/cat/9999\.png'"):
        load_image_dataset(root, bias_csv=bad)
    bad.write_text("\n".join(lines[:5] + lines[6:]) + "\n")  # an image without a row
    with pytest.raises(ValueError, match=r"no row for 1 of 22 images, e\.g\. train/cat/0000\.png"):
        load_image_dataset(root, bias_csv=bad)
    bad.write_text("\n".join(line.replace("train/", "") for line in lines) + "\n")  # cat/0000.png is in 3 splits
    with pytest.raises(ValueError, match=r"6 paths in column 'file_name' match several images, e\.g\. 'bird/0000\.png' "
                                         r"\(test/bird/0000\.png, train/bird/0000\.png, val/bird/0000\.png\)"):
        load_image_dataset(root, bias_csv=bad)
    with pytest.raises(ValueError, match=r"has no column 'place' \(bias_label_column\)\. Its columns are: "
                                         r"file_name, bias_labels"):
        load_image_dataset(root, bias_csv=root / BIAS_CSV_NAME, bias_label_column="place")
    with pytest.raises(FileNotFoundError, match="missing.csv does not exist"):
        load_image_dataset(root, bias_csv=tmp_path / "missing.csv")


def test_class_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    (empty / "cat").mkdir(parents=True)
    (empty / "cat" / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="holds no images"):
        load_image_dataset(empty)
    root = write_class_folders(tmp_path / "splits", splits=True, bias_csv=False)
    for image in (root / "val").rglob("*.png"):
        image.unlink()
    with pytest.raises(ValueError, match=r"The validation split folder .*val holds no images"):
        load_image_dataset(root)
    with pytest.raises(ValueError, match="label_column='y' does not apply"):
        load_image_dataset(tmp_path / "splits" / "images" / "train", label_column="y")
    with pytest.raises(ValueError, match="needs bias_csv"):
        load_image_dataset(tmp_path / "splits" / "images" / "train", bias_label_column="place")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_dataset(tmp_path / "no" / "such" / "folder")


# ------------------------------------------------------------------------------------------- metadata tables
@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_metadata_table_with_a_named_split_column(tmp_path, fmt):
    root = write_metadata_table(tmp_path, fmt=fmt)
    dataset = load_image_dataset(root, bias_label_column="background")
    assert {name: len(part) for name, part in dataset.items()} == {"train": 10, "validation": 3, "test": 3}
    assert dataset["train"].column_names == COLUMNS  # "photographer" and "split" are dropped
    assert dataset["test"].features["labels"].names == ["cat", "dog"]
    assert dataset["test"].features["bias_labels"].names == ["indoor", "outdoor"]
    rows = by_path(dataset)
    assert rows["images/0005.png"] == ("train", 1, 0)
    assert rows["images/0011.png"] == ("validation", 1, 1)
    aliases = {"train": "train", "val": "validation", "test": "test"}
    assert rows == {r["file_name"]: (aliases[r["split"]], ["cat", "dog"].index(r["label"]),
                                     ["indoor", "outdoor"].index(r["background"])) for r in metadata_rows()}


def test_a_table_file_can_be_the_source(tmp_path):
    root = write_metadata_table(tmp_path, fmt="csv")
    table = root / "metadata.csv"
    table.rename(root / "my_labels.csv")
    dataset = load_image_dataset(root / "my_labels.csv", label_column="background")
    assert dataset["train"].features["labels"].names == ["indoor", "outdoor"]
    assert "bias_labels" not in dataset["train"].column_names
    assert len(dataset["validation"]) == 3


def test_integer_labels_keep_their_ids_and_count_classes_over_all_splits(tmp_path):
    root = write_metadata_table(tmp_path, fmt="csv")
    rows = metadata_rows()
    lines = ["file_name,y,split,group"]  # class 1 appears only in test; the train split lacks it
    for i, row in enumerate(rows):
        label = 1 if row["split"] == "test" else 2 * (i % 2)
        lines.append(f"{row['file_name']},{label},{row['split']},{1 if i % 3 else -1}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    dataset = load_image_dataset(root, bias_label_column="group")
    assert dataset["train"].features["labels"].names == ["0", "1", "2"]
    assert set(dataset["train"]["labels"]) == {0, 2} and set(dataset["test"]["labels"]) == {1}
    assert dataset["train"].features["bias_labels"].names == ["not_group", "group"]  # -1/1 -> 0/1
    assert dataset["train"]["bias_labels"][:4] == [0, 1, 1, 0]


def test_metadata_table_errors(tmp_path):
    root = write_metadata_table(tmp_path, fmt="csv")
    table = root / "metadata.csv"
    text = table.read_text()
    with pytest.raises(ValueError, match=r"no column 'lable' \(label_column\)\. Did you mean 'label'\? Its columns "
                                         r"are: label, background, photographer"):
        load_image_dataset(root, label_column="lable")
    with pytest.raises(ValueError, match=r"no column 'place' \(bias_label_column\).*background"):
        load_image_dataset(root, bias_label_column="place")
    with pytest.raises(ValueError, match=r"no column 'partition' \(split_column\)"):
        load_image_dataset(root, split_column="partition")
    with pytest.warns(UserWarning, match="no split information"):
        assert list(load_image_dataset(root, split_column="")) == ["train"]

    table.write_text(text.replace(",val,", ",holdout,"))
    with pytest.raises(ValueError, match=r"split column 'split' has values that name no split: 'holdout'\. "
                                         r"Accepted: train / training, val / valid / validation / dev, "
                                         r"test / testing, or 0 / 1 / 2"):
        load_image_dataset(root)
    table.write_text(text)
    (root / "images" / "0003.png").unlink()
    (root / "images" / "0007.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"2 of 16 paths in column 'file_name' match no file under .*, e\.g\. "
                                                r"'images/0003\.png', 'images/0007\.png'"):
        load_image_dataset(root)
    write_metadata_table(tmp_path, fmt="csv")  # the images back
    table.write_text(text.replace("file_name,", "picture,"))
    with pytest.raises(ValueError, match=r"no image path column \(none of file_name, img_filename, image_id, image, "
                                         r"path, filepath\); its columns are picture, label"):
        load_image_dataset(root)
    table.write_text(text.replace("images/0001.png,dog", "images/0001.png,"))
    with pytest.raises(ValueError, match=r"column 'label' has no value for 1 images, e\.g\. images/0001\.png"):
        load_image_dataset(root)
    table.write_text(text.replace(",val,", ",train,").replace(",test,", ",val,"))
    shutil.copy(table, root / "metadata.jsonl")
    with pytest.raises(ValueError, match="several metadata tables"):
        load_image_dataset(root)


# ------------------------------------------------------------------------------------------- Hub repo folder
@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    """datasets' cache in the test folder, so the parquet files are not converted into the user's cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")


def test_local_hub_repo_folder_is_read_as_that_dataset(tmp_path, datasets_cache):
    root = write_parquet_hub_repo(tmp_path)
    dataset = load_image_dataset(root, bias_label_column="place")
    assert {name: len(part) for name, part in dataset.items()} == HUB_REPO_SPLITS
    assert dataset["train"].column_names == ["image", "labels", "bias_labels"]  # the images are in the parquet files
    for part in dataset.values():
        assert part.features["labels"].names == list(HUB_REPO_CLASSES)
    assert set(dataset["validation"]["labels"]) == {0, 1}  # no "bird" there, still 3 classes
    for split in HUB_REPO_SPLITS:
        assert list(dataset[split]["labels"]) == [r["label"] for r in hub_repo_rows(split)]
        assert list(dataset[split]["bias_labels"]) == [r["place"] for r in hub_repo_rows(split)]
    assert dataset["test"][4]["image"].size == (8, 8)
    with pytest.raises(ValueError, match="bias_csv applies to datasets of image files"):
        load_image_dataset(root, bias_csv=tmp_path / "x.csv")
    with pytest.raises(ValueError, match=r"no column 'Male' \(bias_label_column\).*Its columns are: label, place"):
        load_image_dataset(root, bias_label_column="Male")
    with pytest.warns(UserWarning, match="revision='v1' applies to Hub dataset ids only"):
        load_image_dataset(root, revision="v1")


def test_missing_hub_dataset_is_a_clear_error_offline(datasets_cache):
    with pytest.raises(FileNotFoundError, match="'someone/no-such-dataset'"):
        load_image_dataset("someone/no-such-dataset")


def test_parquet_file_with_images_inside_and_a_split_column(tmp_path, datasets_cache):
    features = datasets.Features({"image": datasets.Image(), "species": datasets.Value("string"),
                                  "split": datasets.Value("string"), "water": datasets.Value("bool")})
    rows = [{"image": Image.new("RGB", (8, 8), (i, 0, 0)), "species": ["gull", "crow", "tern"][i % 3],
             "split": ["train", "train", "dev", "test"][i % 4], "water": i % 2 == 0} for i in range(12)]
    table = tmp_path / "birds.parquet"
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(table))
    dataset = load_image_dataset(table, label_column="species", bias_label_column="water")
    assert {name: len(part) for name, part in dataset.items()} == {"train": 6, "validation": 3, "test": 3}
    assert dataset["train"].features["labels"].names == ["crow", "gull", "tern"]
    assert dataset["train"].features["bias_labels"].names == ["False", "True"]
    assert list(dataset["validation"]["labels"]) == [2, 1, 0]  # rows 2, 6, 10: tern, gull, crow
    assert list(dataset["validation"]["bias_labels"]) == [1, 1, 1]
    assert dataset["test"][0]["image"].getpixel((0, 0)) == (3, 0, 0)


# ------------------------------------------------------------------------------------------- folder mix-ups
def test_parent_folder_of_a_dataset_points_at_it(tmp_path):
    write_waterbirds(tmp_path, n_per_group=1)
    with pytest.raises(ValueError, match=r"single class folder, waterbird_complete95_forest2water2/, which holds "
                                         r"metadata\.csv: pass .*waterbird_complete95_forest2water2 as the dataset"):
        load_image_dataset(tmp_path, label_column=None)


def test_macos_zip_leftovers_and_hidden_folders_are_not_classes(tmp_path):
    root = write_class_folders(tmp_path, splits=False, bias_csv=False)
    (root / "__MACOSX" / "cat").mkdir(parents=True)
    (root / "__MACOSX" / "cat" / "._0000.png").write_bytes(b"resource fork")
    (root / ".ipynb_checkpoints").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = load_image_dataset(root)
    assert dataset["train"].features["labels"].names == ["bird", "cat", "dog"]
    assert len(dataset["train"]) == 12


def test_celeba_official_layout_with_anno_eval_and_img_folders(tmp_path):
    root = write_celeba(tmp_path, fmt="txt", n_images=10)
    for folder, name in (("Anno", "list_attr_celeba.txt"), ("Eval", "list_eval_partition.txt")):
        (root / folder).mkdir()
        (root / name).rename(root / folder / name)
    (root / "Img").mkdir()
    (root / "img_align_celeba").rename(root / "Img" / "img_align_celeba")
    dataset = load_image_dataset(root, label_column="Blond_Hair", bias_label_column="Male")
    assert {name: len(part) for name, part in dataset.items()} == {"train": 6, "validation": 2, "test": 2}
    assert by_path(dataset)["Img/img_align_celeba/000009.jpg"] == ("test", 1, 1)


def test_metadata_table_with_absolute_paths(tmp_path):
    root = write_metadata_table(tmp_path, fmt="jsonl")
    lines = (root / "metadata.jsonl").read_text().replace('"images/', f'"{root}/images/')
    (root / "metadata.jsonl").write_text(lines)
    dataset = load_image_dataset(root)
    assert dataset["train"][0]["image_path"] == "images/0000.png"
    assert "bias_labels" not in dataset["train"].column_names


def test_save_to_disk_folder_split_names_are_mapped_or_refused(tmp_path):
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})

    def part(n):
        return datasets.Dataset.from_dict({"img": [Image.new("RGB", (8, 8))] * n, "label": [i % 2 for i in range(n)]},
                                          features=features)

    datasets.DatasetDict({"train": part(4), "valid": part(2)}).save_to_disk(str(tmp_path / "saved"))
    dataset = load_image_dataset(tmp_path / "saved")
    assert {name: len(split) for name, split in dataset.items()} == {"train": 4, "validation": 2}
    assert dataset["validation"].features["labels"].names == ["a", "b"]
    with pytest.raises(ValueError, match=r"has no column 'split' \(split_column\)"):
        load_image_dataset(tmp_path / "saved", split_column="split")
    datasets.DatasetDict({"train": part(4), "test_ood": part(2)}).save_to_disk(str(tmp_path / "odd"))
    with pytest.raises(ValueError, match=r"splits that are none of train / validation \(val, valid, dev\) / test: "
                                         r"test_ood \(all: train, test_ood\)"):
        load_image_dataset(tmp_path / "odd")
    unlabelled = part(2).cast_column("label", datasets.Value("int64")).map(lambda row: {"label": -1})
    unlabelled = unlabelled.cast_column("label", datasets.ClassLabel(names=["a", "b"]))
    datasets.DatasetDict({"train": part(4), "test": unlabelled}).save_to_disk(str(tmp_path / "unlabelled"))
    with pytest.raises(ValueError, match=r"column 'label' has ids \[-1\] in the test split, outside 0\.\.1 \(-1 marks "
                                         r"unlabelled rows\)"):
        load_image_dataset(tmp_path / "unlabelled")


def test_parent_of_class_folders_and_unpulled_lfs_files_are_errors(tmp_path):
    write_class_folders(tmp_path / "download", splits=False, bias_csv=False)
    with pytest.raises(ValueError, match=r"single class folder, images/, which holds no image of its own, only "
                                         r"sub-folders \(bird, cat, dog\): pass .*images as the dataset"):
        load_image_dataset(tmp_path / "download")
    clone = tmp_path / "clone"
    (clone / "data").mkdir(parents=True)
    (clone / "data" / "train-00000-of-00001.parquet").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 123\n")
    with pytest.raises(FileNotFoundError, match=r"train-00000-of-00001\.parquet is a Git LFS pointer, not the data: "
                                                r"run `git lfs pull`"):
        load_image_dataset(clone)


def test_split_folders_under_other_names(tmp_path):
    root = tmp_path / "mnist_png"
    for split, n in (("training", 3), ("testing", 2)):
        for digit in ("0", "1"):
            for i in range(n):
                (root / split / digit).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8)).save(root / split / digit / f"{i}.png")
    dataset = load_image_dataset(root)  # training / testing are split names too
    assert {name: len(part) for name, part in dataset.items()} == {"train": 6, "test": 4}
    assert dataset["train"].features["labels"].names == ["0", "1"]
    (root / "training").rename(root / "part_a")
    (root / "testing").rename(root / "part_b")
    with pytest.raises(ValueError, match=r"class folders of .* \(part_a, part_b\) hold no image of their own but the "
                                         r"same sub-folders \(0, 1\): if they are split folders, name them"):
        load_image_dataset(root)


@pytest.mark.parametrize("column, value, named", [("y", "nan", "'nan'"), ("y", "NaN", "'NaN'"),
                                                  ("place", "null", "'null'"), ("y", "0.5", "not integers"),
                                                  ("place", "1e3", "not integers")])
def test_missing_markers_and_stray_values_in_label_or_bias_columns_are_errors_not_classes(tmp_path, column, value,
                                                                                         named):
    """A CSV 'nan' (what pandas / numpy write for a missing value) or a stray 0.5 in an integer column used to
    become a class of its own, silently (a third class 'nan' of a binary target)."""
    folder = write_waterbirds(tmp_path)
    lines = (folder / "metadata.csv").read_text().splitlines()
    header = lines[0].split(",")
    row = lines[4].split(",")
    row[header.index(column)] = value
    lines[4] = ",".join(row)
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=named) as error:
        load_image_dataset(folder, label_column="y", bias_label_column="place")
    assert row[header.index("img_filename")] in str(error.value) and repr(column) in str(error.value)


def test_text_classes_are_still_read_as_names(tmp_path):
    folder = write_waterbirds(tmp_path)
    text = (folder / "metadata.csv").read_text().replace(",0,/b/", ",land,/b/").replace(",1,/o/", ",water,/o/")
    (folder / "metadata.csv").write_text(text)
    result = load_image_dataset(folder, label_column="y", bias_label_column="place")
    assert result["train"].features["bias_labels"].names == ["land", "water"]


def test_a_mistyped_local_path_names_the_local_path(tmp_path, datasets_cache, monkeypatch):
    """'data/nope' beside an existing data/ folder is a mistyped path more likely than a Hub id: say both."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="local path .*data/nope does not exist"):
        load_image_dataset("data/nope")
