"""The artifact transplant check (issue 24, re-check without an attacked split): the paste is exact, the flip rate
measures a shortcut and nothing else, bad inputs are refused, and the validation benchmark runs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hf_debias.metrics import artifact_transplant_check, transplant_artifact

ROOT = Path(__file__).resolve().parents[1]


def donors_with_patch(m=4, size=8):
    donors = torch.zeros(m, 3, size, size)
    masks = torch.zeros(m, size, size)
    donors[:, :, :2, :2] = 5.0
    masks[:, :2, :2] = 1.0
    return donors, masks


def test_the_paste_copies_exactly_the_masked_region():
    images = torch.randn(6, 3, 8, 8)
    donors, masks = donors_with_patch()
    donors[:, :, 4:, 4:] = 7.0  # outside the mask: must not travel
    pasted, index = transplant_artifact(images, donors, masks, seed=1)
    assert index.shape == (6,)
    assert torch.equal(pasted[:, :, :2, :2], torch.full((6, 3, 2, 2), 5.0))
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[:2, :2] = False
    assert torch.equal(pasted[:, :, outside], images[:, :, outside])
    again, _ = transplant_artifact(images, donors, masks, seed=1)
    assert torch.equal(again, pasted)  # the seed decides the donors


def two_class_images():
    """40 images of classes 1 (bright) and 2 (dark), which both models below classify right when clean."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(40, 3, 8, 8, generator=generator) * 0.1 + torch.where(
        torch.arange(40) % 2 == 0, 1.0, -1.0)[:, None, None, None]
    return images, np.where(np.arange(40) % 2 == 0, 1, 2)


class CornerShortcut(nn.Module):
    """Predicts class 0 whenever the top-left corner is bright, else the class coded in the image's mean sign."""

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 3)
        logits[:, 1] = (x.mean(dim=(1, 2, 3)) > 0).float()
        logits[:, 2] = 0.5
        logits[:, 0] = 10.0 * (x[:, :, :2, :2].mean(dim=(1, 2, 3)) > 2.5).float()
        return logits


class IgnoresCorner(CornerShortcut):
    def forward(self, x):
        x = x.clone()
        x[:, :, :2, :2] = 0.0
        return super().forward(x)


def test_the_flip_rate_measures_the_shortcut():
    images, labels = two_class_images()
    donors, masks = donors_with_patch()
    shortcut = artifact_transplant_check(CornerShortcut(), images, labels, donors, masks, target_class=0, repeats=2)
    assert shortcut["clean_accuracy"] == 1.0 and shortcut["transplanted_accuracy"] == 0.0
    assert shortcut["flip_rate"] == 1.0 and shortcut["num_flip_candidates"] == 40
    assert shortcut["transplant_drop"] == 1.0
    fair = artifact_transplant_check(IgnoresCorner(), images, labels, donors, masks, target_class=0)
    assert fair["flip_rate"] == 0.0 and fair["transplanted_accuracy"] == fair["clean_accuracy"]


@pytest.mark.parametrize("target_class", [3, -1, 1.5])
def test_a_target_class_the_model_does_not_have_is_refused(target_class):
    images, labels = two_class_images()
    donors, masks = donors_with_patch()
    with pytest.raises(ValueError, match=r"target_class must be a class id of the model, 0 to 2"):
        artifact_transplant_check(CornerShortcut(), images, labels, donors, masks, target_class=target_class)


@pytest.mark.parametrize("change,message", [
    (lambda i, d, m: (i, d[:, :, :4], m), r"one size"),
    (lambda i, d, m: (i, d, m[:2]), r"one per donor"),
    (lambda i, d, m: (i, d, torch.zeros_like(m)), r"Every donor mask is empty"),
    (lambda i, d, m: (i, d, m * 3), r"\[0, 1\]"),
    (lambda i, d, m: (i, d[:0], m[:0]), r"No donor images")])
def test_bad_transplant_inputs_are_refused(change, message):
    images, (donors, masks) = torch.randn(4, 3, 8, 8), donors_with_patch()
    with pytest.raises(ValueError, match=message):
        transplant_artifact(*change(images, donors, masks))


def test_the_validation_benchmark_quick_mode(tmp_path):
    spec = importlib.util.spec_from_file_location("transplant_check", ROOT / "benchmarks" / "transplant_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["transplant_check"] = module
    spec.loader.exec_module(module)
    results = module.main(["--quick", "--output", str(tmp_path / "t.json")])
    assert {row["model"] for row in results["rows"]} == {"vanilla", "RR-ClArC"}
    for row in results["rows"]:  # the transplant ran on validation digits: its own clean accuracy, its own count
        assert row["transplant_num_images"] == 200 and 0.0 <= row["transplanted_accuracy"] <= 1.0
    assert "| patch | vanilla | 1 |" in (tmp_path / "t.md").read_text()


def test_a_transplant_result_is_the_cards_shortcut_check():
    from hf_debias import CAV, ModelCardInfo, RRClArCConfig
    from hf_debias.hub.cards import debias_model_card

    images, labels = two_class_images()
    donors, masks = donors_with_patch()
    before = artifact_transplant_check(CornerShortcut(), images, labels, donors, masks, target_class=0)
    after = artifact_transplant_check(IgnoresCorner(), images, labels, donors, masks, target_class=0)
    cav = CAV(torch.ones(8), concept="patch", layer="layer2", concept_mean=1.0, clean_mean=0.0)
    info = ModelCardInfo(metrics={"validation": {**after, "tcav_score": 0.5}},
                         baseline_metrics={"validation": before})
    text = debias_model_card(RRClArCConfig(cav=cav), repo_id="org/m", library="timm", plain_loading=True,
                             info=info).text
    assert "| validation | 100.0 % | 100.0 % | 0.0 pts | 100.0 % / 0.0 % (100.0 pts) |" in text
    assert "do **not** show that the shortcut is gone" not in text  # a shortcut check was recorded
