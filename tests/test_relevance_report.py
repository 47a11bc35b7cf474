"""compare_artifact_relevance: R_bias of several models on the same images, and their heatmap grid."""

import pytest
import torch
from torch import nn

from hf_debias.relevance_report import compare_artifact_relevance


def _linear_model(weight_mask: torch.Tensor) -> nn.Module:
    """A 2-class linear model on 1x8x8 images whose class-1 logit reads only the pixels in ``weight_mask``."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2, bias=False))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[1] = weight_mask.flatten().float()
    return model


def test_a_model_that_reads_only_the_artifact_scores_one_and_one_that_ignores_it_zero(tmp_path):
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:2, :2] = True
    images = torch.rand(5, 1, 8, 8) + 0.5  # positive pixels: input x gradient is the weight times the pixel
    masks = mask.expand(5, 8, 8)
    models = {"biased": _linear_model(mask), "corrected": _linear_model(~mask)}
    result = compare_artifact_relevance(models, images, masks, target=1, method="input_x_gradient",
                                        process_masks=False, shown=3, path=tmp_path / "grid.png")
    assert result.artifact_relevance["biased"] == pytest.approx(1.0)
    assert result.artifact_relevance["corrected"] == pytest.approx(0.0)
    assert result.attribution_method == {"biased": "input_x_gradient", "corrected": "input_x_gradient"}
    assert result.num_images == 5 and len(result.per_image["biased"]) == 5
    assert result.summary()["corrected"] == {"artifact_relevance": pytest.approx(0.0),
                                             "attribution_method": "input_x_gradient"}
    assert result.heatmaps == tmp_path / "grid.png" and result.heatmaps.read_bytes()[:4] == b"\x89PNG"


def test_hand_computed_share_and_no_picture_without_a_path():
    weight = torch.zeros(8, 8)
    weight[0, 0], weight[7, 7] = 3.0, 1.0  # 3 of 4 units of relevance inside the mask
    mask = torch.zeros(1, 8, 8)
    mask[0, 0, 0] = 1
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2, bias=False))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[0] = weight.flatten()
    result = compare_artifact_relevance({"m": model}, torch.ones(1, 1, 8, 8), mask, target=0,
                                        method="input_x_gradient", process_masks=False)
    assert result.artifact_relevance["m"] == pytest.approx(0.75) and result.heatmaps is None


def test_bad_arguments_are_refused():
    images, masks = torch.rand(2, 1, 8, 8), torch.zeros(2, 8, 8)
    with pytest.raises(ValueError, match="non-empty mapping"):
        compare_artifact_relevance({}, images, masks)
    with pytest.raises(ValueError, match="shown"):
        compare_artifact_relevance({"m": _linear_model(torch.ones(8, 8))}, images, masks, shown=0)
