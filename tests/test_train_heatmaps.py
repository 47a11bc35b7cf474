"""``hf-debias train``'s before / after heatmaps: R_bias in the report and the card, heatmaps.png beside the model,
the values reproducible from the saved models, concept images without masks, and bad flags refused."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from hf_debias import compare_artifact_relevance, load_model
from hf_debias.cli import main
from hf_debias.heatmaps import HEADER_PIXELS

FAST = ["--model_name_or_path", "simple_convnet", "--dataset", "controlled-artifact", "--max_train_samples", "64",
        "--max_eval_samples", "48", "--max_steps", "2", "--per_device_train_batch_size", "16", "--use_cpu", "true",
        "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no", "--heatmap_samples", "8"]


def train(folder, *extra: str) -> int:
    return main(["train", *FAST, "--output_dir", str(folder), *extra])


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def masked_eval_images(count: int = 8):
    """The images the report measures: the first ``count`` masked test_attacked images after --max_eval_samples's
    seeded draw and the heatmap sample's seeded shuffle (both seed 42, the Trainer's default)."""
    from hf_debias.cli.train import DataArguments, ModelArguments, build_model_and_transforms, load_data
    from hf_debias.data.transforms import mask_transform_for

    data_args = DataArguments(dataset="controlled-artifact", max_train_samples=64, max_eval_samples=48)
    data = load_data(data_args, seed=42, eval_mask_column="artifact_mask")
    _, _, _, eval_transform = build_model_and_transforms(ModelArguments(), data_args, data)
    split = data.evaluation["test_attacked"].shuffle(seed=42)
    masks = mask_transform_for(eval_transform)(split["artifact_mask"])
    index = (masks.flatten(1).amax(1) > 0).nonzero().flatten()[:count].tolist()
    return (eval_transform([split[i]["image"] for i in index]), masks[index],
            torch.tensor([split[i]["labels"] for i in index]))


def test_a_run_from_a_trained_model_reports_r_bias_before_and_after_as_the_saved_models_give_it(tmp_path, capsys):
    assert train(tmp_path / "vanilla", "--debias", "none", "--heatmap_mask_column", "none") == 0
    assert not (tmp_path / "vanilla" / "heatmaps.png").exists()  # 'none' turns the heatmaps off
    assert train(tmp_path / "rrr", "--model_name_or_path", str(tmp_path / "vanilla"), "--debias", "rrr",
                 "--rrr_mask_column", "artifact_mask", "--rrr_lamb", "1000", "--freeze", "none",
                 "--learning_rate", "0.01") == 0
    out = capsys.readouterr().out
    folder = tmp_path / "rrr"
    report = json.loads((folder / "report.json").read_text())["heatmaps"]
    assert report["num_images"] == 8 and report["heatmaps"] == "heatmaps.png"
    assert "test_attacked" in report["images"] and "model this run started from" in report["before"]
    relevance = report["artifact_relevance"]
    assert list(relevance) == ["before", "after: rrr"]
    # the same numbers from the saved models on the same images: "before" is the vanilla run, "after" this one
    images, masks, labels = masked_eval_images()
    again = compare_artifact_relevance({"before": load_model(tmp_path / "vanilla"), "after": load_model(folder)},
                                       images, masks, labels=labels)
    assert relevance["before"] == pytest.approx(again.artifact_relevance["before"], abs=1e-5)
    assert relevance["after: rrr"] == pytest.approx(again.artifact_relevance["after"], abs=1e-5)
    assert relevance["after: rrr"] != pytest.approx(relevance["before"], abs=1e-4)  # training moved it
    assert f"before: {relevance['before']:.3f}" in out and "heatmaps: " in out
    # the grid: one row per drawn image (6) under the header, one column per model plus the image
    width, height = png_size(folder / "heatmaps.png")
    assert height > 6 * 64 + HEADER_PIXELS - 1 and width >= 3 * 64
    # the card shows the chart, the heatmaps and the R_bias table; the record leaves the pictures out
    card = (folder / "README.md").read_text()
    assert "![before vs after](report.png)" in card and "(heatmaps.png)" in card
    assert f"| before | {relevance['before']:.3f} |" in card and "on 8 eval images with a non-empty" in card
    files = json.loads((folder / "debias_config.json").read_text())["hf_debias_files"]
    assert "heatmaps.png" not in files and "report.png" not in files and "model.safetensors" in files


def test_concept_images_give_heatmaps_without_r_bias_and_a_later_save_without_them_removes_the_grid(tmp_path):
    concepts = tmp_path / "concepts"
    concepts.mkdir()
    for index in range(3):
        Image.new("RGB", (28, 28), (40 * index, 200, 30)).save(concepts / f"c{index}.png")
    (concepts / "notes.txt").write_text("not an image")
    folder = tmp_path / "out"
    rrr = ["--debias", "rrr", "--rrr_mask_column", "artifact_mask", "--freeze", "none"]
    assert train(folder, *rrr, "--heatmap_images", str(concepts)) == 0
    report = json.loads((folder / "report.json").read_text())["heatmaps"]
    assert report["num_images"] == 3 and report["artifact_relevance"] is None
    assert "3 concept images" in report["images"]
    card = (folder / "README.md").read_text()
    assert "(heatmaps.png)" in card and "| model | R_bias |" not in card
    assert png_size(folder / "heatmaps.png")[1] >= 3 * 64 + HEADER_PIXELS - 1
    assert train(folder, *rrr, "--heatmap_mask_column", "none") == 0  # the same folder, no heatmaps this time
    assert not (folder / "heatmaps.png").exists() and "heatmaps.png" not in (folder / "README.md").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--heatmap_mask_column", "ruler_mask"], r"--heatmap_mask_column 'ruler_mask': no eval split has that column"),
    (["--heatmap_samples", "0"], r"--heatmap_samples must be an integer >= 1, got 0"),
    (["--heatmap_images", "/no/such/folder"], r"--heatmap_images '/no/such/folder' is not a folder of images"),
    (["--heatmap_images", ".", "--heatmap_mask_column", "artifact_mask"], r"give one"),
], ids=["missing_column", "zero_samples", "missing_folder", "both"])
def test_bad_heatmap_flags_are_one_error_line(extra, message, tmp_path, capsys):
    import re

    assert train(tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err


def test_an_empty_concept_folder_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert train(tmp_path / "out", "--heatmap_images", str(tmp_path / "empty")) == 2
    assert "holds no images" in capsys.readouterr().err
