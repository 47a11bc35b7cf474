"""Spatial CAVs (``pooling="none"``): a direction over every position and channel of a layer, for an artifact at a
fixed place. Fitted, saved, checked against the layer's shape, and used by RR-ClArC (the penalty along the whole
gradient map), P-/A-ClArC (an exact spatial projection) and the TCAV derivatives — on a conv net and a ViT."""

from __future__ import annotations

import json

import warnings

import pytest
import timm
import torch

from hf_debias import CAV, PClArCConfig, RRClArCConfig, compute_cav, get_debias_model
from hf_debias.functional.rr_clarc import channels_last, rr_clarc_penalty
from hf_debias.hooks import LayerHook
from hf_debias.layers import resolve_layer
from hf_debias.metrics.artifact import directional_derivatives

# (model, layer, input size, (positions, channels) at that layer)
MODELS = {
    "conv": (lambda: timm.create_model("simple_convnet", num_classes=4), "stages.1", 16, ([8, 8], 32)),
    "vit": (lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=32),
            "blocks.1", 32, ([5], 192)),
}


def concept_images(size: int, n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images; half of them carry a bright square in the bottom-right corner (the artifact)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=generator) * 0.5
    labels = torch.arange(n) % 2
    images[labels == 1, :, -size // 4:, -size // 4:] = 2.0
    return images, labels


def maps(model, layer: str, images: torch.Tensor) -> torch.Tensor:
    hook = LayerHook(resolve_layer(model, layer))
    model.eval()
    with torch.no_grad():
        model(images)
    activation = hook.activation
    hook.remove()
    return activation


@pytest.mark.parametrize("kind", MODELS)
def test_a_spatial_cav_is_the_normalised_difference_of_the_mean_maps(kind):
    build, layer, size, (positions, channels) = MODELS[kind]
    model = build()
    images, labels = concept_images(size)
    cav = compute_cav(model, layer, (images, labels), pooling="none", validation_fraction=0, progress=False)
    assert cav.spatial_shape == positions and cav.num_channels == channels and cav.is_spatial
    assert cav.vector.numel() == channels * torch.Size(positions).numel()
    flat = channels_last(maps(model, layer, images)).flatten(1).double()
    expected = flat[labels == 1].mean(0) - flat[labels == 0].mean(0)
    torch.testing.assert_close(cav.vector.double(), expected / expected.norm(), atol=1e-5, rtol=1e-4)
    assert cav.direction().shape == (torch.Size(positions).numel(), channels)
    # the corner artifact lives in the corner: most of the direction's weight is at the last positions
    weight = cav.direction().square().sum(1)
    assert weight[-1] > weight.mean()


def test_a_spatial_cav_round_trips_and_hand_edited_shapes_are_refused(tmp_path):
    model = timm.create_model("simple_convnet", num_classes=4)
    cav = compute_cav(model, "stages.1", concept_images(16), pooling="none", progress=False)
    cav.save_pretrained(tmp_path / "cav")
    loaded = CAV.from_pretrained(tmp_path / "cav")
    assert loaded.spatial_shape == [8, 8] and torch.equal(loaded.vector, cav.vector)
    assert loaded.pooling_description == "none (spatial, 8x8 positions)" and "positions=[8, 8]" in repr(loaded)
    config_path = tmp_path / "cav" / "cav_config.json"
    original = json.loads(config_path.read_text())
    for bad, message in (([8, 4], "says num_channels=32 over 32 positions"), ([-8, 8], "integers >= 1"),
                         ("8x8", "integers >= 1"), (None, "integers >= 1")):
        config_path.write_text(json.dumps({**original, "spatial_shape": bad}))
        with pytest.raises(ValueError, match=message):
            CAV.from_pretrained(tmp_path / "cav")
    config_path.write_text(json.dumps({**original, "pooling": "mean"}))
    with pytest.raises(ValueError, match="only for spatial CAVs"):
        CAV.from_pretrained(tmp_path / "cav")


def test_a_spatial_cav_refuses_another_input_size():
    model = timm.create_model("simple_convnet", num_classes=4)
    cav = compute_cav(model, "stages.1", concept_images(16), pooling="none", progress=False)
    corrected = get_debias_model(model, RRClArCConfig(cav=cav, lamb=1.0, freeze="before_layer"))
    corrected.train()
    with pytest.raises(ValueError, match=r"spans positions \[8, 8\] but layer 'stages.1' has \[10, 10\]"):
        corrected(torch.randn(4, 3, 20, 20), labels=torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("kind", MODELS)
def test_rr_clarc_with_a_spatial_cav_penalises_the_gradient_along_the_whole_map(kind):
    build, layer, size, _ = MODELS[kind]
    model = build()
    images, labels = concept_images(size, n=8)
    cav = compute_cav(model, layer, (images, labels), pooling="none", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # on the ViT: a block is not the token-model recipe's layer
        corrected = get_debias_model(model, RRClArCConfig(cav=cav, lamb=10.0, gradient_target="all_logits",
                                                          freeze="before_layer", penalty_form="gradient"))
    corrected.train()
    output = corrected(images, labels=labels)
    # by hand: d(sum of logits) / d(the captured activation), projected on the whole spatial direction, squared,
    # batch mean
    (grad,) = torch.autograd.grad(output.logits.sum(), corrected.method._latent, retain_graph=True)
    expected = (channels_last(grad).flatten(1) @ cav.vector).square().mean()
    assert float(output.penalty_terms["rrclarc_penalty"]) == pytest.approx(float(expected), rel=1e-4)
    assert output.penalty.requires_grad
    # and the functional form agrees, whatever the _mean suffix (one projection per image)
    for aggregation in ("l2", "l2_mean"):
        value = rr_clarc_penalty(grad, cav.direction(), aggregation=aggregation)
        assert float(value) == pytest.approx(float(expected), rel=1e-5)


def test_rr_clarc_penalty_refuses_a_spatial_direction_of_another_shape():
    grad = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match=r"\[positions, channels\] = \[9, 4\]"):
        rr_clarc_penalty(grad, torch.randn(8, 4))


def test_p_clarc_with_a_spatial_cav_moves_every_sample_to_the_clean_mean_projection():
    model = timm.create_model("simple_convnet", num_classes=4)
    images, labels = concept_images(16)
    cav = compute_cav(model, "stages.1", (images, labels), pooling="none", progress=False)
    corrected = get_debias_model(model, PClArCConfig(cav=cav)).eval()
    seen = {}
    handle = resolve_layer(model, "stages.2").module.register_forward_pre_hook(
        lambda module, args: seen.setdefault("a", args[0].detach()))
    with torch.no_grad():
        corrected(images)
    handle.remove()
    projection = channels_last(seen["a"]).flatten(1) @ cav.vector
    torch.testing.assert_close(projection, torch.full_like(projection, cav.clean_mean), atol=1e-4, rtol=1e-4)


def test_directional_derivatives_along_a_spatial_cav_are_one_per_image():
    model = timm.create_model("simple_convnet", num_classes=4)
    images, labels = concept_images(16, n=6)
    cav = compute_cav(model, "stages.1", (images, labels), pooling="none", progress=False)
    values = directional_derivatives(model, "stages.1", cav, images, target_class=2)
    assert values.shape == (6,)
    with pytest.raises(ValueError, match="one derivative per image"):
        directional_derivatives(model, "stages.1", cav, images, target_class=2, per_position=True)


def test_cli_cav_pooling_none_saves_a_spatial_cav_that_a_correction_loads(tmp_path, capsys):
    from image_layouts import write_concept_folders

    from hf_debias.cli import main

    write_concept_folders(tmp_path)
    assert main(["cav", "simple_convnet", "--layer", "stages.1", "--pooling", "none", "--concept-dir",
                 str(tmp_path / "with"), "--clean-dir", str(tmp_path / "without"), "--validation-fraction", "0",
                 "--no-progress", "--output-dir", str(tmp_path / "spatial")]) == 0
    assert "pooling: none (as requested)" in capsys.readouterr().out
    cav = CAV.from_pretrained(tmp_path / "spatial")
    assert cav.is_spatial and cav.num_channels == 32 and cav.spatial_shape == [8, 8]  # 16-px input, stride 2
    model = get_debias_model(timm.create_model("simple_convnet", num_classes=3),
                             RRClArCConfig(cav=str(tmp_path / "spatial"), lamb=1.0, freeze="before_layer"))
    model.train()
    output = model(torch.randn(4, 3, 16, 16), labels=torch.zeros(4, dtype=torch.long))
    assert output.penalty_terms["rrclarc_penalty"] >= 0 and model.method.layer.spec == "stages.1"
