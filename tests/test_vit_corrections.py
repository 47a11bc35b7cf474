"""Corrections on vision transformers (issue 23) and the CAV check (issue 24, part 1).

- The token-model recipe is chosen by the model: a timm ViT and a transformers ViT get their CAV at the patch
  embedding, spatial, and RR-ClArC's finite-difference penalty; a conv net keeps the paper's recipe.
- The finite-difference penalty: its value by hand, its limit (the gradient form), BatchNorm statistics untouched by
  its extra passes, and its refusals.
- A card whose only evidence is TCAV / R_bias says that it does not show the shortcut is gone.
- ``cav.quality["residual_auc"]``: about 0.5 for a concept in one direction, high for one spread over several.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import timm
import torch
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

from hf_debias import CAV, ModelCardInfo, RRClArCConfig, compute_cav, get_debias_model
from hf_debias.cav.fitting import RESIDUAL_AUC_WARNING, describe_auc, residual_auc
from hf_debias.cav.pooling import shift_along
from hf_debias.functional.rr_clarc import (finite_difference_penalty, gradient_target_values, random_signs,
                                           rr_clarc_penalty)
from hf_debias.hub.cards import debias_model_card
from hf_debias.token_models import is_token_model, patch_embedding_layer


def timm_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=16, patch_size=4,
                             depth=2, embed_dim=32, num_heads=2)


def transformers_vit():
    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=2, intermediate_size=32, num_labels=3))


def concept_images(n=40, size=16):
    """Half the images with a bright corner patch (the concept), half without."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, size, size, generator=generator)
    images[: n // 2, :, :4, :4] = 3.0
    return images, (torch.arange(n) < n // 2).long()


# --------------------------------------------------------------------------- the recipe follows the model
@pytest.mark.parametrize("build,patch_embedding", [(timm_vit, "patch_embed"),
                                                   (transformers_vit, "vit.embeddings.patch_embeddings")])
def test_a_vit_gets_the_token_model_recipe(build, patch_embedding):
    model = build()
    assert is_token_model(model) and patch_embedding_layer(model) == patch_embedding
    cav = compute_cav(model, None, concept_images(), progress=False, validation_fraction=0.0)
    assert cav.layer == patch_embedding and cav.pooling == "none" and cav.spatial_shape == [16]
    assert "patch embedding" in cav.fit_params["pooling_reason"]
    config = RRClArCConfig(cav=cav, lamb=1.0)
    assert config.penalty_form == "auto"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the recipe itself draws no warning
        wrapped = get_debias_model(model, config)
    assert wrapped.debias_config.penalty_form == "finite_difference"
    assert wrapped.debias_config.to_dict()["penalty_form"] == "finite_difference"  # what is saved: what ran


def test_a_conv_net_keeps_the_paper_recipe():
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    assert not is_token_model(model) and patch_embedding_layer(model) is None
    cav = compute_cav(model, None, concept_images(size=32), progress=False, validation_fraction=0.0)
    assert cav.layer == "fc:input" and cav.pooling != "none"
    wrapped = get_debias_model(model, RRClArCConfig(cav=random_cav(cav.num_channels, "layer2"), layer="layer2"))
    assert wrapped.debias_config.penalty_form == "gradient"


@pytest.mark.parametrize("name,kwargs,expected", [
    ("vit_tiny_patch16_224", dict(img_size=32), "patch_embed"),
    ("test_vit", dict(img_size=32), "norm_pre"),  # dynamic_img_size: the patch embedding keeps a [N, H, W, C] grid
    ("swin_tiny_patch4_window7_224", {}, None),
    ("convnext_atto", {}, None)])
def test_token_model_detection(name, kwargs, expected):
    model = timm.create_model(name, pretrained=False, num_classes=3, **kwargs)
    assert patch_embedding_layer(model) == expected
    assert is_token_model(model) == (expected is not None)


def random_cav(channels, layer, pooling="max", **kwargs):
    vector = torch.randn(channels, generator=torch.Generator().manual_seed(1))
    return CAV(vector, concept="patch", layer=layer, pooling=pooling, concept_mean=2.0, clean_mean=-1.0,
               num_samples=40, num_concept_samples=20, **kwargs)


def test_a_vit_correction_off_the_recipe_warns_with_the_recipe():
    model = timm_vit()
    cav = random_cav(32, "blocks.0", pooling="mean")
    with pytest.warns(UserWarning, match=r"vision transformer.*penalty_form='gradient'.*blocks\.0.*'patch_embed'"):
        get_debias_model(model, RRClArCConfig(cav=cav, penalty_form="gradient"))


# --------------------------------------------------------------------------- the finite-difference penalty
def test_finite_difference_tends_to_the_gradient_form():
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
    a = torch.randn(5, 6, requires_grad=True)
    h = torch.nn.functional.normalize(torch.randn(6), dim=0)
    signs = random_signs((5, 4), "cpu", torch.Generator().manual_seed(3))
    (grad,) = torch.autograd.grad(gradient_target_values(head(a), "random_signs", signs=signs).sum(), a)
    expected = rr_clarc_penalty(grad, h, aggregation="l2_mean")
    eps = 1e-3
    value = finite_difference_penalty(head(a + eps / 2 * h), head(a - eps / 2 * h), eps, target="random_signs",
                                      generator=torch.Generator().manual_seed(3))
    assert float(value) == pytest.approx(float(expected), rel=1e-3)


def test_the_method_compares_the_outputs_at_the_concept_and_clean_means():
    model = timm_vit()
    images, concept = concept_images()
    cav = compute_cav(model, None, (images, concept), progress=False, validation_fraction=0.0)
    wrapped = get_debias_model(copy.deepcopy(model), RRClArCConfig(cav=cav, lamb=2.0, gradient_target="all_logits"))
    wrapped.train()
    out = wrapped(images[:6], labels=torch.zeros(6, dtype=torch.long))
    # by hand: patch_embed's output moved to μ⁺ and μ⁻ along the spatial direction, the rest of the model run on it
    plain = copy.deepcopy(model).train()
    with torch.no_grad():
        tokens = plain.patch_embed(images[:6])
        projection = tokens.flatten(1) @ cav.vector
        outputs = []
        for target in (cav.concept_mean, cav.clean_mean):
            moved = shift_along(tokens, cav.direction(), target - projection)
            handle = plain.patch_embed.register_forward_hook(lambda module, args, output, moved=moved: moved)
            outputs.append(plain(images[:6]).sum(dim=1))
            handle.remove()
    expected = ((outputs[0] - outputs[1]) / (cav.concept_mean - cav.clean_mean)).square().mean()
    assert float(out.penalty_terms["rrclarc_penalty"]) == pytest.approx(float(expected), rel=1e-4)
    assert float(out.penalty) == pytest.approx(2.0 * float(expected), rel=1e-4)
    out.loss.backward()
    assert wrapped.model.blocks[0].attn.qkv.weight.grad is not None  # it trains the blocks after the CAV's layer


def test_the_finite_difference_passes_leave_batch_norm_statistics_alone():
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    cav = random_cav(48, "layer2")
    corrected = get_debias_model(copy.deepcopy(model), RRClArCConfig(cav=cav, lamb=1.0, freeze="none",
                                                                     penalty_form="finite_difference"))
    control = get_debias_model(copy.deepcopy(model), RRClArCConfig(cav=cav, lamb=0.0, freeze="none",
                                                                   penalty_form="finite_difference"))
    images = torch.randn(4, 3, 32, 32)
    penalties = [float(wrapped.train()(images, labels=torch.tensor([0, 1, 2, 0])).penalty)
                 for wrapped in (corrected, control)]
    assert penalties[0] > 0 and penalties[1] == 0  # three passes for one, one for the other
    for name, buffer in control.model.named_buffers():
        if "running" in name or "num_batches" in name:
            assert torch.equal(buffer, dict(corrected.model.named_buffers())[name]), name
    assert all(module.training for module in corrected.model.modules()
               if isinstance(module, nn.BatchNorm2d))  # and training mode is back after the passes


def test_the_finite_difference_form_is_refused_where_it_has_no_meaning():
    with pytest.raises(ValueError, match=r"aggregation='cosine_mean' has no finite-difference form.*'l2_mean'"):
        RRClArCConfig(cav=random_cav(32, "patch_embed"), aggregation="cosine_mean", penalty_form="finite_difference")
    with pytest.raises(ValueError, match="has no finite-difference form"):  # 'auto' on a ViT resolves to it
        get_debias_model(timm_vit(), RRClArCConfig(cav=random_cav(32, "blocks.0"), aggregation="cosine"))
    no_means = CAV(torch.ones(32), concept="patch", layer="patch_embed")
    with pytest.raises(ValueError, match="concept_mean / clean_mean are None"):
        get_debias_model(timm_vit(), RRClArCConfig(cav=no_means, allow_cav_mismatch=True))
    with pytest.raises(ValueError, match="finite and non-zero"):
        finite_difference_penalty(torch.zeros(2, 3), torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError, match="non-empty"):
        finite_difference_penalty(torch.zeros(0, 3), torch.zeros(0, 3), 1.0)
    with pytest.raises(ValueError, match="3 labels for 4 rows"):
        gradient_target_values(torch.zeros(4, 3), "true_label", labels=torch.zeros(3, dtype=torch.long))


def test_a_saved_vit_correction_reloads_with_the_form_it_ran():
    from hf_debias import load_model

    model = timm_vit()
    cav = compute_cav(model, None, concept_images(), progress=False, validation_fraction=0.0)
    wrapped = get_debias_model(model, RRClArCConfig(cav=cav, lamb=1.0))
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        wrapped.save_pretrained(folder)
        loaded = load_model(folder)
        assert loaded.debias_config.penalty_form == "finite_difference"


# --------------------------------------------------------------------------- cards: TCAV alone proves nothing
@pytest.mark.parametrize("metrics,relevance,says", [
    ({"test": {"accuracy": 0.9, "tcav_pooled_sensitivity": 0.01}}, {}, "TCAV"),
    ({"test": {"accuracy": 0.9}}, {"vanilla": 0.3, "this model": 0.1}, "R_bias"),
    ({"test": {"accuracy": 0.9, "tcav_score": 0.5}}, {"vanilla": 0.3}, "TCAV and R_bias"),
    ({"test": {"clean_accuracy": 0.9, "attacked_accuracy": 0.89, "tcav_score": 0.5}}, {}, None),
    ({"test": {"accuracy": 0.9}}, {}, None)])
def test_a_card_whose_only_evidence_is_tcav_or_relevance_says_it_proves_nothing(metrics, relevance, says):
    info = ModelCardInfo(metrics=metrics, artifact_relevance=relevance)
    text = debias_model_card(RRClArCConfig(cav=random_cav(48, "layer2")), repo_id="org/m", library="timm",
                             plain_loading=True, info=info).text
    if says is None:
        assert "do **not** show that the shortcut is gone" not in text and "No shortcut check" not in text
        return
    assert f"The only evidence of the correction here is {says}: these measure" in text
    assert "do **not** show that the shortcut is gone" in text
    assert "No shortcut check was recorded" in text.split("## Limitations")[1]


# --------------------------------------------------------------------------- the CAV check
def _maps(n=300, positions=2, channels=8, seed=0):
    """``[N, P, C]`` activations whose concept adds channel 0 at position 0 and channel 1 at position 1: the pooled
    concept is one direction (channels 0 + 1), the positions read it in two."""
    generator = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(np.int64)
    maps = generator.normal(size=(n, positions, channels))
    maps[:, 0, 0] += 3.0 * labels
    maps[:, 1, 1] += 3.0 * labels
    return torch.from_numpy(maps).float(), torch.from_numpy(labels)


def test_residual_auc_is_chance_for_one_direction_and_high_for_a_concept_the_positions_read_apart():
    maps, labels = _maps()
    pooled = maps.mean(dim=1)
    cav = CAV.fit(pooled, labels, validation_fraction=0.5)  # signal CAV: channels 0 + 1 of the pooled map
    assert cav.quality["auc"] > 0.95
    assert abs(cav.quality["residual_auc"] - 0.5) < 0.1  # in the pooled space nothing linear is left
    assert f"residual_auc={cav.quality['residual_auc']:.3f}" in repr(cav)
    # the same direction removed at every position leaves (channel 0 - channel 1) / 2 at each: readable
    residual = residual_auc(maps, labels, cav.vector)
    assert residual >= RESIDUAL_AUC_WARNING
    quality = {**cav.quality, "residual_auc": residual}
    assert "one direction leaves the concept readable" in describe_auc(quality)
    # both channel directions removed: nothing linear is left
    assert abs(residual_auc(maps, labels, torch.eye(8)[:2]) - 0.5) < 0.1
    # a spatial CAV (the flattened map) captures it
    spatial = CAV.fit(maps.flatten(1), labels, validation_fraction=0.5)
    assert abs(spatial.quality["residual_auc"] - 0.5) < 0.1


def test_compute_cav_records_the_residual_auc_and_it_survives_a_save(tmp_path):
    model = timm_vit()
    cav = compute_cav(model, None, concept_images(n=80), progress=False, validation_fraction=0.5)
    assert cav.quality["residual_auc"] is not None and 0.0 <= cav.quality["residual_auc"] <= 1.0
    cav.save_pretrained(tmp_path / "cav")
    assert CAV.from_pretrained(tmp_path / "cav").quality["residual_auc"] == pytest.approx(cav.quality["residual_auc"])


def test_the_run_report_uses_the_cards_rule_for_unproven_evidence():
    from hf_debias.hub.cards import unproven_evidence_note

    assert unproven_evidence_note({"validation": {"accuracy": 0.8, "tcav_score": 0.5}}).startswith(
        "The only evidence of the correction here is TCAV")
    assert "R_bias" in unproven_evidence_note({"validation": {"accuracy": 0.8}}, has_relevance=True)
    checked = {"test_clean": {"accuracy": 0.8, "tcav_score": 0.5}, "test_attacked": {"accuracy": 0.79}}
    assert unproven_evidence_note(checked, has_relevance=True) is None  # an attacked split is a shortcut check
    assert unproven_evidence_note({"validation": {"accuracy": 0.8}}) is None  # nothing was claimed


def test_two_finite_difference_parts_compose_each_with_its_own_penalty():
    model = timm_vit()
    images, concept = concept_images()
    first = compute_cav(model, None, (images, concept), progress=False, validation_fraction=0.0)
    other = images.clone()
    other[: len(images) // 2, :, -4:, -4:] = -3.0  # a second artifact in the opposite corner
    second = compute_cav(model, None, (other, concept), progress=False, validation_fraction=0.0)
    labels = torch.zeros(6, dtype=torch.long)
    alone = []
    for cav in (first, second):
        wrapped = get_debias_model(copy.deepcopy(model), RRClArCConfig(cav=cav, gradient_target="all_logits"))
        alone.append(float(wrapped.train()(images[:6], labels=labels).penalty))
    composed = get_debias_model(copy.deepcopy(model), [RRClArCConfig(cav=first, gradient_target="all_logits"),
                                                       RRClArCConfig(cav=second, gradient_target="all_logits")])
    out = composed.train()(images[:6], labels=labels)
    parts = sorted(float(value) for key, value in out.penalty_terms.items() if key.endswith("rrclarc_penalty"))
    assert parts == pytest.approx(sorted(alone), rel=1e-4)  # neither part's passes leak into the other's


def test_end_warns_about_a_large_alpha_on_a_vit_only():
    from hf_debias import EnDConfig

    with pytest.warns(UserWarning, match=r"alpha=10 on a vision transformer.*74\.6 % at alpha=1"):
        get_debias_model(timm_vit(), EnDConfig(alpha=10.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_debias_model(timm_vit(), EnDConfig(alpha=1.0))
        get_debias_model(timm.create_model("test_resnet", pretrained=False, num_classes=3), EnDConfig(alpha=10.0))
