"""``hf-debias train`` on the dataset layouts users have (written exactly as downloaded by ``image_layouts``):
train split only, group tables per eval split, report.json / report.png, class names in the saved model,
``pipeline`` on the result, and one clean error line for bad input."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
from PIL import Image

import image_layouts as layouts
from hf_debias.cli import main
from hf_debias.report import GROUP_METRICS, format_group_table, write_report

BATCH = 4
FAST = ["--per_device_train_batch_size", str(BATCH), "--per_device_eval_batch_size", "8", "--use_cpu", "true",
        "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no", "--logging_steps", "1"]


def _waterbirds(root):
    rows = layouts.waterbirds_rows()
    groups = {"validation": Counter((r["y"], r["place"]) for r in rows if r["split"] == 1)}
    args = [str(layouts.write_waterbirds(root)), "--label_column", "y", "--bias_label_column", "place",
            "--debias", "end"]
    return args, sum(r["split"] == 0 for r in rows), groups, ["0", "1"], "place"


def _celeba(root):
    n = 20
    validation = [i for i in range(1, n + 1) if layouts.celeba_partition(i, n) == 1]
    groups = {"validation": Counter(((layouts.celeba_attribute(i, "Blond_Hair") + 1) // 2,
                                     (layouts.celeba_attribute(i, "Male") + 1) // 2) for i in validation)}
    args = [str(layouts.write_celeba(root, n_images=n)), "--label_column", "Blond_Hair", "--bias_label_column",
            "Male"]
    train = sum(layouts.celeba_partition(i, n) == 0 for i in range(1, n + 1))
    return args, train, groups, ["not_Blond_Hair", "Blond_Hair"], "Male"


def _class_folders(root):
    classes = ["bird", "cat", "dog"]
    groups = {name: Counter((classes.index(cls), layouts.class_folder_bias(folder, cls, i))
                            for cls, count in layouts.CLASS_FOLDER_COUNTS[folder].items() for i in range(count))
              for name, folder in (("validation", "val"), ("test", "test"))}
    folder = layouts.write_class_folders(root)
    args = [str(folder), "--bias_csv", str(folder / layouts.BIAS_CSV_NAME), "--eval_split", "validation,test"]
    return args, sum(layouts.CLASS_FOLDER_COUNTS["train"].values()), groups, classes, "bias_labels"


def _metadata_table(root):
    rows = layouts.metadata_rows()
    groups = {"validation": Counter((list(layouts.METADATA_CLASSES).index(r["label"]),
                                     ["indoor", "outdoor"].index(r["background"])) for r in rows
                                    if r["split"] == "val")}
    args = [str(layouts.write_metadata_table(root, fmt="jsonl")), "--bias_label_column", "background"]
    return args, sum(r["split"] == "train" for r in rows), groups, list(layouts.METADATA_CLASSES), "background"


def _hub_repo(root):
    groups = {"test": Counter((r["label"], r["place"]) for r in layouts.hub_repo_rows("test"))}
    args = [str(layouts.write_parquet_hub_repo(root)), "--bias_label_column", "place", "--eval_split", "test"]
    return args, layouts.HUB_REPO_SPLITS["train"], groups, list(layouts.HUB_REPO_CLASSES), "place"


@pytest.mark.parametrize("layout", [_waterbirds, _celeba, _class_folders, _metadata_table, _hub_repo],
                         ids=["waterbirds", "celeba", "class_folders_bias_csv", "metadata_table", "parquet_hub_repo"])
def test_train_on_each_layout_uses_the_train_split_and_reports_every_group(layout, tmp_path, capsys):
    args, n_train, expected_groups, class_names, bias_column = layout(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["train", "--model_name_or_path", "simple_convnet", "--dataset", *args, "--output_dir", str(out),
                 "--num_train_epochs", "1", *FAST]) == 0
    printed = capsys.readouterr().out
    # training saw the train split only: one epoch is ceil(n_train / batch) steps
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == math.ceil(n_train / BATCH)
    assert json.loads((out / "train_results.json").read_text())["train_samples"] == n_train
    report = json.loads((out / "report.json").read_text())
    assert report["train_samples"] == n_train and report["class_names"] == class_names
    assert set(report["results"]) == set(expected_groups)
    for split, expected in expected_groups.items():
        groups = report["groups"][split]
        assert Counter({(g["label"], g["bias"]): g["count"] for g in groups}) == expected
        assert report["eval_samples"][split] == sum(expected.values())
        worst = min(g["accuracy"] for g in groups)
        assert report["results"][split]["after: none" if "end" not in args else "after: end"][
            "worst_group_accuracy"] == pytest.approx(worst)
        # the terminal: a summary row and a small group table per split, the worst group marked, names shown
        assert f"\n{split}: {sum(expected.values())} images in {len(expected)} (class, bias) groups\n" in printed
    table_headers = [line for line in printed.splitlines() if line.startswith("class ")]
    assert len(table_headers) == len(expected_groups) and all(bias_column in line for line in table_headers)
    assert printed.count("<- worst") == len(expected_groups)
    summary = printed[printed.index("images of the train split"):].splitlines()[1:]  # after Trainer's own logs
    assert max(len(line) for line in summary if not line.startswith("Report: ")) < 100
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the class names and the full class count (all splits, not the ones a split holds) are in the saved model
    config = json.loads((out / "config.json").read_text())
    assert config["num_classes"] == len(class_names)
    assert config["pretrained_cfg"]["label_names"] == class_names
    if "end" in args:
        assert any("end_r_ortho" in entry for entry in state["log_history"])


def test_cli_trained_models_work_in_pipeline_with_class_names_and_a_baseline_gives_before_after(tmp_path):
    from transformers import AutoImageProcessor, pipeline

    from test_loading import tiny_vit_folder

    data = layouts.write_metadata_table(tmp_path)
    vit = tiny_vit_folder(tmp_path / "vit", num_labels=5, image_size=16)
    image = Image.new("RGB", (8, 8), (200, 30, 30))
    common = ["--dataset", str(data), "--bias_label_column", "background", "--max_steps", "1", *FAST]
    for model, out in ((str(vit), tmp_path / "vit_run"), ("simple_convnet", tmp_path / "vanilla")):
        assert main(["train", "--model_name_or_path", model, "--output_dir", str(out), *common]) == 0
        predictions = pipeline("image-classification", model=str(out))(image)
        assert sorted(p["label"] for p in predictions) == ["cat", "dog"]
    assert (tmp_path / "vit_run" / "preprocessor_config.json").is_file()
    assert AutoImageProcessor.from_pretrained(tmp_path / "vit_run").size["height"] == 16
    config = json.loads((tmp_path / "vit_run" / "config.json").read_text())
    assert config["id2label"] == {"0": "cat", "1": "dog"} and config["label2id"] == {"cat": 0, "dog": 1}
    # --baseline_results: the report puts the uncorrected run next to this one
    assert main(["train", "--model_name_or_path", "simple_convnet", "--output_dir", str(tmp_path / "end"),
                 "--debias", "end", "--baseline_results", str(tmp_path / "vanilla"), *common]) == 0
    baseline = json.loads((tmp_path / "vanilla" / "eval_results.json").read_text())
    rows = json.loads((tmp_path / "end" / "report.json").read_text())["results"]["validation"]
    assert list(rows) == ["before: baseline", "after: end"]
    assert rows["before: baseline"]["worst_group_accuracy"] == pytest.approx(baseline["eval_worst_group_accuracy"])
    assert rows["before: baseline"]["bias_conflicting_accuracy"] == pytest.approx(
        baseline["eval_bias_conflicting_accuracy"])


def test_image_size_builds_a_vit_at_that_size_and_no_augment_is_accepted(tmp_path):
    data = layouts.write_parquet_hub_repo(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--model_name_or_path", "test_vit", "--image_size", "16", "--no_augment",
                 "--dataset", str(data), "--output_dir", str(out), "--max_steps", "1", *FAST]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_args"]["img_size"] in ([16, 16], 16)
    assert config["pretrained_cfg"]["input_size"] == [3, 16, 16]
    assert json.loads((out / "training_args.json").read_text())["bias_label_column"] == "bias_labels"


def _rewrite(path, old, new):
    path.write_text(path.read_text().replace(old, new))


def _bad_split_values(root):
    folder = layouts.write_metadata_table(root)
    _rewrite(folder / "metadata.csv", ",val,", ",holdout,")
    return [str(folder)], "holdout"


def _missing_label_column(root):
    return [str(layouts.write_metadata_table(root)), "--label_column", "species"], "species"


def _missing_bias_column(root):
    return [str(layouts.write_metadata_table(root)), "--bias_label_column", "place"], "place"


def _bias_csv_duplicate(root):
    folder = layouts.write_class_folders(root)
    csv = folder / layouts.BIAS_CSV_NAME
    csv.write_text(csv.read_text() + "train/cat/0000.png,0\n")
    return [str(folder), "--bias_csv", str(csv)], "train/cat/0000.png"


def _celeba_attribute(root):
    return [str(layouts.write_celeba(root)), "--label_column", "Blonde_Hair", "--bias_label_column", "Male"], \
        "Blond_Hair"


def _path_matches_no_file(root):
    folder = layouts.write_metadata_table(root)
    _rewrite(folder / "metadata.csv", "images/0003.png", "images/missing.png")
    return [str(folder)], "missing.png"


def _unknown_eval_split(root):
    return [str(layouts.write_metadata_table(root)), "--eval_split", "holdout"], "'holdout'"


def _nan_label(root):
    folder = layouts.write_metadata_table(root)
    _rewrite(folder / "metadata.csv", "images/0003.png,dog,", "images/0003.png,nan,")
    return [str(folder)], "images/0003.png ('nan')"


def _resume_without_checkpoint(root):
    return [str(layouts.write_metadata_table(root)), "--resume_from_checkpoint", "true"], "holds no checkpoint-N"


def _resume_from_missing_folder(root):
    return [str(layouts.write_metadata_table(root)), "--resume_from_checkpoint", str(root / "checkpoint-9")], \
        "no such checkpoint folder"


@pytest.mark.parametrize("bad", [_bad_split_values, _missing_label_column, _missing_bias_column, _bias_csv_duplicate,
                                 _celeba_attribute, _path_matches_no_file, _unknown_eval_split, _nan_label,
                                 _resume_without_checkpoint, _resume_from_missing_folder],
                         ids=lambda f: f.__name__.strip("_"))
def test_bad_input_is_one_error_line_and_exit_2(bad, tmp_path, capsys):
    args, named = bad(tmp_path / "data")
    code = main(["train", "--dataset", *args, "--output_dir", str(tmp_path / "run"), "--max_steps", "1", *FAST])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("hf-debias: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err
    assert named in errors[0]
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_group_table_marks_the_worst_group_names_and_caps_rows():
    groups = [{"label": y, "bias": b, "accuracy": acc, "count": n, "aligned": y == b}
              for (y, b, acc, n) in ((0, 0, 0.9, 10), (0, 1, 0.25, 4), (1, 0, 0.5, 2), (1, 1, 1.0, 8))]
    text = format_group_table(groups, class_names=["cat", "dog"], bias_names=["indoor", "outdoor"],
                              bias_header="background")
    lines = text.splitlines()
    assert lines[0].split() == ["class", "background", "count", "accuracy", "group"]
    assert lines[3].split() == ["cat", "outdoor", "4", "25.0%", "conflicting", "<-", "worst"]
    assert lines[2].split() == ["cat", "indoor", "10", "90.0%", "aligned"]
    capped = format_group_table(groups, max_rows=2).splitlines()
    assert len(capped) == 5 and "the 2 worst of 4 groups" in capped[-1]
    assert [line.split()[:2] for line in capped[2:4]] == [["0", "1"], ["1", "0"]]


def test_write_report_panels_write_null_for_nan_and_one_chart(tmp_path):
    after = {"accuracy": 0.5, "unbiased_accuracy": 0.4, "worst_group_accuracy": 0.1,
             "bias_conflicting_accuracy": float("nan")}
    json_path, png_path = write_report(tmp_path, panels={"validation": {"before": after, "after": after},
                                                         "test": {"after": after}},
                                       title="t", metrics=GROUP_METRICS, details={"train_samples": 3})
    data = json.loads(json_path.read_text())
    assert data["results"]["validation"]["after"]["bias_conflicting_accuracy"] is None
    assert data["train_samples"] == 3 and png_path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="exactly one of rows and panels"):
        write_report(tmp_path, title="t")


def test_help_lists_model_data_and_debias_options_before_the_trainers_with_defaults():
    from hf_debias.cli.train import build_parser

    text = build_parser().format_help()
    positions = [text.index(f"\n{title}:\n") for title in ("model", "data", "debias (hf_debias)",
                                                          "training (transformers TrainingArguments)")]
    assert positions == sorted(positions)
    assert positions[0] < text.index("--bias_csv") < positions[2] < text.index("--end_alpha") < positions[3] \
        < text.index("--learning_rate")
    assert "(default: colour-digits)" in text and text.index("usage:") == 0 and len(text.splitlines()[0]) < 200
    model_args, data_args, training_args = build_parser().parse_args_into_dataclasses(
        ["--model-name-or-path", "resnet18", "--label_column", "y", "--no-augment", "--image-size", "64",
         "--output_dir", "out", "--bias-label-column", "place"])
    assert (model_args.model_name_or_path, data_args.label_column, data_args.augment, data_args.image_size,
            training_args.bias_label_column) == ("resnet18", "y", False, 64, "place")


def test_max_samples_draw_a_seeded_random_subset_not_the_first_class_folder(tmp_path):
    from hf_debias.cli.train import DataArguments, load_data

    folder = layouts.write_class_folders(tmp_path)
    args = DataArguments(dataset=str(folder), max_train_samples=6, max_eval_samples=3, eval_split="test",
                         bias_csv=str(folder / layouts.BIAS_CSV_NAME))
    data = load_data(args, seed=0)
    assert len(data.train) == 6 and len(data.evaluation["test"]) == 3 and data.num_classes == 3
    assert len(set(data.train["labels"])) > 1  # the first 6 files are 4 birds and 2 cats
    assert data.train["labels"] == load_data(args, seed=0).train["labels"]
    assert data.bias_names == ["0", "1"] and data.bias_source == "bias_labels"


def test_resume_from_checkpoint_true_continues_from_the_newest_checkpoint(tmp_path, caplog):
    """``--resume_from_checkpoint true`` used to be read as a folder named 'true' (a misleading debias-config
    error); it means the newest checkpoint-N of --output_dir, as Trainer's resume_from_checkpoint=True."""
    data = str(layouts.write_metadata_table(tmp_path / "data"))
    out = tmp_path / "run"
    fast = [a for a in FAST if a not in ("--save_strategy", "no")]
    common = ["train", "--dataset", data, "--output_dir", str(out), *fast, "--save_strategy", "steps",
              "--save_steps", "1"]
    assert main([*common, "--max_steps", "2"]) == 0
    assert main([*common, "--max_steps", "3", "--resume_from_checkpoint", "true"]) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3]  # steps 1-2 came from checkpoint-2


def test_eval_split_accepts_the_source_name_of_a_renamed_split(tmp_path):
    """The loader names a 'val' / 'valid' folder or column value 'validation'; --eval_split valid used to fail."""
    data = str(layouts.write_metadata_table(tmp_path / "data"))
    out = tmp_path / "run"
    assert main(["train", "--dataset", data, "--output_dir", str(out), "--eval_split", "val,test", "--max_steps", "1",
                 *FAST]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["results"]) == {"validation", "test"} and report["eval_samples"] == {"validation": 3, "test": 3}


def test_the_card_names_the_single_eval_split_sizes_each_group_names_the_bias_and_embeds_the_chart(tmp_path):
    run = ["train", "--dataset", "colour-digits", "--colour_digits_train_size", "128", "--max_eval_samples", "40",
           "--max_steps", "2", *FAST]
    assert main([*run, "--debias", "none", "--output_dir", str(tmp_path / "vanilla")]) == 0
    assert main([*run, "--debias", "end", "--baseline_results", str(tmp_path / "vanilla"),
                 "--output_dir", str(tmp_path / "end")]) == 0
    card = (tmp_path / "end" / "README.md").read_text()
    report = json.loads((tmp_path / "end" / "report.json").read_text())
    assert "| eval |" not in card and "| test_unbiased | accuracy |" in card
    rows = [line.split(" | ") for line in card.splitlines() if line.startswith("| test_unbiased | ") and
            line.split(" | ")[4:5] in (["aligned"], ["conflicting"])]
    groups = report["groups"]["test_unbiased"]
    assert len(rows) == len(groups) and sum(int(row[3]) for row in rows) == 40  # every group sized, 40 images
    colours = report["bias_names"]
    assert all(row[2].split(" (")[0] in colours for row in rows)  # bias ids named (red, green...)
    assert all(row[5] != "-" and row[6].rstrip(" |") != "-" for row in rows)  # before and after both filled in
    assert "![before vs after](report.png)" in card and (tmp_path / "end" / "report.png").is_file()
