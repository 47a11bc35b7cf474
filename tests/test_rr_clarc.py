"""RR-ClArC: the penalty's value in closed form, every gradient target x aggregation on a conv net and a ViT, the
attention fallback, freeze policies, and bad input."""

import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from hf_debias import CAV, RRClArCConfig, get_debias_model
from hf_debias.functional import (AGGREGATIONS, GRADIENT_TARGETS, gradient_target_output, latent_gradient,
                                  rr_clarc_penalty)
from hf_debias.functional.rr_clarc import latent_gradient_depends_on_input
from hf_debias.methods.rr_clarc.method import LINEARITY_EVIDENCE_BATCHES


def pooled_linear_model(channels=6, classes=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(channels, classes))


def random_cav(channels, seed=0, layer=None):
    return CAV(torch.randn(channels, generator=torch.Generator().manual_seed(seed)), concept="test", layer=layer,
               concept_mean=2.0, clean_mean=-1.0)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_penalty_matches_closed_form_on_a_pooled_linear_head(aggregation):
    # logits = W avgpool(a) + b, so the gradient of logit c with respect to every position of a is W_c / (H W).
    model = pooled_linear_model()
    cav = random_cav(6, layer="0")
    config = RRClArCConfig(layer="0", cav=cav, lamb=2.5, gradient_target="class", target_class=1,
                           aggregation=aggregation, freeze="none")
    wrapped = get_debias_model(model, config)
    x = torch.randn(5, 3, 4, 4)
    wrapped.train()
    for _ in range(LINEARITY_EVIDENCE_BATCHES - 1):  # the warning waits for that many batches of evidence
        wrapped(torch.randn(5, 3, 4, 4), labels=torch.zeros(5, dtype=torch.long))
    with pytest.warns(UserWarning, match="Only linear operations"):
        out = wrapped(x, labels=torch.zeros(5, dtype=torch.long))
    w_c = model[3].weight[1].detach() / 16
    h = cav.vector
    projection = float(w_c @ h)
    expected = {"l2": projection ** 2, "l1": abs(projection), "cosine": abs(projection) / float(w_c.norm())}
    assert out.penalty_terms["rrclarc_penalty"].item() == pytest.approx(expected[aggregation.removesuffix("_mean")],
                                                                         rel=1e-5)
    assert out.penalty.item() == pytest.approx(2.5 * out.penalty_terms["rrclarc_penalty"].item(), rel=1e-6)
    ce = F.cross_entropy(out.logits, torch.zeros(5, dtype=torch.long))
    assert out.loss.item() == pytest.approx(ce.item() + out.penalty.item(), rel=1e-6)


def test_penalty_function_per_position_differs_from_mean():
    grad = torch.zeros(2, 3, 1, 2)
    grad[:, 0, 0, 0], grad[:, 0, 0, 1] = 1.0, -1.0  # cancels in the spatial mean, not per position
    cav = torch.tensor([1.0, 0.0, 0.0])
    assert rr_clarc_penalty(grad, cav, aggregation="l2_mean").item() == 0.0
    assert rr_clarc_penalty(grad, cav, aggregation="l2").item() == pytest.approx(1.0)
    tokens = grad.flatten(2).transpose(1, 2)  # the same values as [N, T, C]
    assert rr_clarc_penalty(tokens, cav, aggregation="l2").item() == pytest.approx(1.0)
    assert rr_clarc_penalty(torch.zeros(2, 3), cav, aggregation="cosine").item() == 0.0  # no NaN


def test_gradient_targets_pick_the_right_logits():
    logits = torch.tensor([[1.0, 5.0, 2.0], [3.0, 0.0, 4.0]], requires_grad=True)
    labels = torch.tensor([0, 1])

    def weights(target, **kwargs):
        (grad,) = torch.autograd.grad(gradient_target_output(logits, target, labels=labels, **kwargs), logits)
        return grad

    assert torch.equal(weights("all_logits"), torch.ones(2, 3))
    assert torch.equal(weights("class", target_class=2), torch.tensor([[0.0, 0, 1], [0, 0, 1]]))
    assert torch.equal(weights("true_label"), torch.tensor([[1.0, 0, 0], [0, 1, 0]]))
    assert torch.equal(weights("max_logit"), torch.tensor([[0.0, 1, 0], [0, 0, 1]]))
    signs = weights("random_signs")
    assert set(signs.unique().tolist()) <= {-1.0, 1.0}
    expected = (torch.eye(3) - F.softmax(logits.detach(), 1)[:, None, :]).mean(dim=1)  # d mean log p / d logits
    assert torch.allclose(weights("mean_log_prob"), expected, atol=1e-6)


def test_official_logprobs_is_log_of_softmax_plus_1e5_and_differs_from_mean_log_prob_on_a_confident_model():
    # A confident 10-class model: the predicted class has p ~ 1, the others p ~ e^-20 << 1e-5.
    logits = torch.full((3, 10), -10.0)
    logits[torch.arange(3), torch.tensor([0, 4, 9])] = 10.0
    logits += 0.1 * torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    logits.requires_grad_(True)
    official = gradient_target_output(logits, "official_logprobs")
    reference = torch.log(torch.softmax(logits, dim=1) + 1e-5).mean(dim=1).sum()  # the official code's `logprobs`
    assert official.item() == pytest.approx(reference.item(), rel=1e-6)
    ours = gradient_target_output(logits, "mean_log_prob")
    assert ours.item() == pytest.approx(F.log_softmax(logits, 1).mean(1).sum().item(), rel=1e-6)
    assert ours.item() < official.item() - 10  # log p of the unlikely classes is ~ -20, floored at log 1e-5 ~ -11.5
    (g_official,) = torch.autograd.grad(official, logits)
    (g_reference,) = torch.autograd.grad(reference, logits)
    (g_ours,) = torch.autograd.grad(gradient_target_output(logits, "mean_log_prob"), logits)
    assert torch.allclose(g_official, g_reference, atol=1e-7)
    assert g_official.abs().max() < 1e-3  # the +1e-5 removes almost all of the gradient of a confident model
    assert (g_ours - g_official).abs().max() == pytest.approx(0.9, abs=1e-3)  # 1/K - p_max for the winner


def test_functions_are_importable_from_functional():
    import hf_debias.functional as functional
    import hf_debias.functional.rr_clarc as module

    for name in ("rr_clarc_penalty", "gradient_target_output", "latent_gradient", "GRADIENT_TARGETS"):
        assert getattr(functional, name) is getattr(module, name)
    a = torch.randn(2, 3, requires_grad=True)
    assert torch.equal(latent_gradient((a * 2).sum(), a), torch.full((2, 3), 2.0))


def test_the_trainer_flag_offers_every_gradient_target():
    from dataclasses import fields

    from hf_debias import DebiasTrainingArguments

    field = next(f for f in fields(DebiasTrainingArguments) if f.name == "rrclarc_gradient_target")
    assert field.metadata["choices"] == list(GRADIENT_TARGETS) and "official_logprobs" in field.metadata["choices"]


def _conv_model():
    return timm.create_model("test_resnet", pretrained=False, num_classes=3)


def _vit_model():
    return timm.create_model("test_vit", pretrained=False, num_classes=3, img_size=32)


# Targets (the scalar differentiated) and aggregations (how its gradient is reduced) are independent code paths:
# every target with the paper's aggregation and every aggregation with the paper's target, on both model kinds.
TARGET_AND_AGGREGATION = sorted({(target, "l2_mean") for target in GRADIENT_TARGETS}
                                | {("random_signs", aggregation) for aggregation in AGGREGATIONS})


@pytest.mark.parametrize("target,aggregation", TARGET_AND_AGGREGATION)
@pytest.mark.parametrize("kind,layer,channels", [("conv", "layer2", 48), ("vit", "blocks.0", 64)])
def test_every_target_and_aggregation_trains_conv_and_vit(kind, layer, channels, target, aggregation):
    torch.manual_seed(0)
    model = _conv_model() if kind == "conv" else _vit_model()
    # the gradient form on both (on a ViT the default is the finite difference, tested in test_rr_clarc_vit.py)
    config = RRClArCConfig(layer=layer, cav=random_cav(channels, layer=layer), lamb=1.0, gradient_target=target,
                           target_class=2 if target == "class" else None, aggregation=aggregation, freeze="none",
                           penalty_form="gradient")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # on the ViT: the gradient form is not the token-model recipe
        wrapped = get_debias_model(model, config).train()
    out = wrapped(torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 0]))
    out.loss.backward()
    value = out.penalty_terms["rrclarc_penalty"]
    assert torch.isfinite(value) and value > 0
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_double_backward_needs_the_math_attention_path_only_while_training():
    model = _vit_model()
    assert model.blocks[0].attn.fused_attn  # timm's fused SDPA, whose CPU kernel has no double backward
    config = RRClArCConfig(layer="blocks.0", cav=random_cav(64, layer="blocks.0"), freeze="none",
                           penalty_form="gradient")
    with pytest.warns(UserWarning, match="vision transformer"):
        wrapped = get_debias_model(model, config)
    calls = []
    original = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(torch.backends.cuda.math_sdp_enabled() and not torch.backends.cuda.flash_sdp_enabled())
        return original(*args, **kwargs)

    x = torch.randn(2, 3, 32, 32)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(F, "scaled_dot_product_attention", spy)
        wrapped.train()(x, labels=torch.tensor([0, 1])).loss.backward()
        training_calls, calls[:] = list(calls), []
        with torch.no_grad():
            wrapped.eval()(x)
    assert training_calls and all(training_calls)  # math only while the penalty is on
    assert calls and not any(calls)  # evaluation keeps the fused kernels
    # Without the fallback the same double backward fails on the fused CPU kernel.
    acts = {}
    handle = model.blocks[0].register_forward_hook(lambda module, args, out: acts.setdefault("a", out))
    grad = torch.autograd.grad(model.train()(x).sum(), acts["a"], create_graph=True)[0]
    with pytest.raises(RuntimeError, match="not implemented"):
        grad.square().sum().backward()
    handle.remove()


def test_freeze_policies_and_restore():
    model = _conv_model()
    original = {name: p.requires_grad for name, p in model.named_parameters()}
    cav = random_cav(48, layer="layer2")
    paper = get_debias_model(model, RRClArCConfig(layer="layer2", cav=cav, freeze="conv_norm"))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    paper.train()
    assert not model.bn1.training and model.fc.training  # frozen norms stay in eval mode
    paper.unload()
    assert {name: p.requires_grad for name, p in model.named_parameters()} == original

    before = get_debias_model(model, RRClArCConfig(layer="layer2", cav=cav, freeze="before_layer"))
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4", "fc"}
    before.unload()
    vit = _vit_model()
    get_debias_model(vit, RRClArCConfig(layer="blocks.0", cav=random_cav(64, layer="blocks.0"), freeze="before_layer"))
    assert not vit.cls_token.requires_grad and not vit.patch_embed.proj.weight.requires_grad
    assert not vit.blocks[0].attn.qkv.weight.requires_grad and vit.blocks[1].attn.qkv.weight.requires_grad


def test_frozen_up_to_the_layer_still_gets_a_penalty_on_the_head():
    model = _conv_model()
    wrapped = get_debias_model(model, RRClArCConfig(layer="layer2", cav=random_cav(48, layer="layer2"),
                                                    freeze="before_layer"))
    out = wrapped.train()(torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 0]))
    out.loss.backward()
    assert model.layer3[0].conv1.weight.grad is not None and model.conv1[0].weight.grad is None


def test_lamb_zero_is_plain_cross_entropy():
    model = _conv_model()
    wrapped = get_debias_model(model, RRClArCConfig(layer="layer2", cav=random_cav(48, layer="layer2"), lamb=0.0))
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    out = wrapped.train()(x, labels=y)
    assert out.penalty.item() == 0.0
    assert out.loss.item() == pytest.approx(F.cross_entropy(out.logits, y).item())


class TestBadInput:
    def test_unknown_names_fail_at_construction_with_the_choices(self):
        cav = random_cav(48)
        with pytest.raises(ValueError, match="gradient_target='max'.*random_signs"):
            RRClArCConfig(cav=cav, gradient_target="max")
        with pytest.raises(ValueError, match="aggregation='l3'.*l2_mean"):
            RRClArCConfig(cav=cav, aggregation="l3")
        with pytest.raises(ValueError, match="freeze='all'.*conv_norm"):
            RRClArCConfig(cav=cav, freeze="all")
        with pytest.raises(ValueError, match="target_class"):
            RRClArCConfig(cav=cav, gradient_target="class")
        with pytest.raises(ValueError, match="gradient_target='allrand'"):
            gradient_target_output(torch.zeros(2, 3), "allrand")

    def test_negative_lamb_and_missing_cav(self):
        with pytest.raises(ValueError, match="lamb must be a finite number >= 0, got -1"):
            RRClArCConfig(cav=random_cav(4), lamb=-1)
        with pytest.raises(ValueError, match="needs a CAV"):
            RRClArCConfig(layer="layer2")

    def test_cav_length_must_match_the_layer_channels(self):
        wrapped = get_debias_model(_conv_model(), RRClArCConfig(layer="layer2", cav=random_cav(10, layer="layer2")))
        with pytest.raises(ValueError, match="The CAV has 10 channels but layer 'layer2' has 48"):
            wrapped.train()(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 1]))

    def test_cav_from_another_layer_or_model_is_refused_without_override(self):
        cav = random_cav(48, layer="layer1")
        with pytest.raises(ValueError, match="computed at layer 'layer1'.*allow_cav_mismatch"):
            get_debias_model(_conv_model(), RRClArCConfig(layer="layer2", cav=cav))
        other = CAV(torch.randn(48), layer="layer2", base_model_name_or_path="resnet50")
        with pytest.raises(ValueError, match="computed on 'resnet50', this model is '.*test_resnet"):
            get_debias_model(_conv_model(), RRClArCConfig(layer="layer2", cav=other))
        with pytest.warns(UserWarning, match="Using it anyway"):
            get_debias_model(_conv_model(), RRClArCConfig(layer="layer2", cav=other, allow_cav_mismatch=True))

    def test_a_layer_off_the_logit_path_or_with_nothing_trainable_fails(self):
        model = _conv_model()
        with pytest.raises(ValueError, match="leaves no trainable parameter"):
            get_debias_model(model, RRClArCConfig(layer="fc", cav=random_cav(3, layer="fc"), freeze="before_layer"))
        assert all(p.requires_grad for p in model.parameters())  # nothing left frozen after the error
        head_only = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        for p in head_only.parameters():
            p.requires_grad_(False)
        head_only[1].bias.requires_grad_(True)  # only the bias trains: the latent gradient does not depend on it
        wrapped = get_debias_model(head_only, RRClArCConfig(layer="0", cav=random_cav(12, layer="0"), freeze="none"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(ValueError, match="does not depend on any trainable parameter"):
                wrapped.train()(torch.randn(2, 3, 2, 2), labels=torch.tensor([0, 1]))


@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_the_linear_head_warning_suggests_mean_pooling_only_for_a_max_pooled_cav(pooling):
    # After global average pooling the head reads the spatial mean: a max-pooled CAV gets the hint, a mean one not.
    cav = CAV(torch.randn(6, generator=torch.Generator().manual_seed(0)), concept="test", layer="0", pooling=pooling)
    wrapped = get_debias_model(pooled_linear_model(), RRClArCConfig(layer="0", cav=cav, freeze="none"))
    with pytest.warns(UserWarning, match="Only linear operations") as caught:
        for _ in range(LINEARITY_EVIDENCE_BATCHES):
            wrapped.train()(torch.randn(3, 3, 4, 4), labels=torch.zeros(3, dtype=torch.long))
    hints = [str(w.message) for w in caught if "pooling='mean'" in str(w.message)]
    assert bool(hints) == (pooling == "max")


# --------------------------------------------------------------------------- the linear-head warning
def _warnings_of_one_step(model, layer, channels, batch=4, size=32, **config):
    """The linear-head warnings of as many training steps as the warning needs as evidence."""
    torch.manual_seed(0)
    wrapped = get_debias_model(model, RRClArCConfig(layer=layer, cav=random_cav(channels, layer=layer), **config))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(LINEARITY_EVIDENCE_BATCHES):
                wrapped.train()(torch.randn(batch, 3, size, size), labels=torch.arange(batch) % 3)
    finally:
        wrapped.unload()
    return [str(w.message) for w in caught if "Only linear operations" in str(w.message)]


@pytest.fixture(scope="module")
def resnet50():
    return timm.create_model("resnet50", pretrained=False, num_classes=3)


def test_no_linear_head_warning_on_resnet50_layer3_under_the_default_freeze(resnet50):
    # Under conv_norm BatchNorm is in eval mode, so layer4 is piecewise linear: its second derivative is zero, but
    # the latent gradient still changes from image to image through the ReLU pattern.
    assert _warnings_of_one_step(resnet50, "layer3", 1024) == []


def test_the_warning_fires_after_the_last_stage_with_advice_for_conv_norm(resnet50):
    (message,) = _warnings_of_one_step(resnet50, "layer4", 2048)  # followed only by global pooling and fc
    assert "Under freeze='conv_norm' nothing before 'layer4' trains here" in message
    assert "freeze='before_layer'" in message and "head-only correction" in message


@pytest.mark.parametrize("freeze", ["before_layer", "none"])
def test_the_warning_on_a_pooled_linear_head_advises_an_earlier_layer(freeze):
    (message,) = _warnings_of_one_step(pooled_linear_model(), "0", 6, size=4, freeze=freeze)
    assert f"choose an earlier layer (see `hf-debias layers MODEL`) with a CAV computed there; freeze={freeze!r} " \
           "then trains the layers in between" in message


@pytest.mark.parametrize("layer", ["blocks.0", "blocks.11"])
def test_no_linear_head_warning_on_a_vit_block(layer):
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32)
    assert _warnings_of_one_step(vit, layer, 192, penalty_form="gradient") == []


def test_the_check_waits_for_a_batch_of_different_images():
    wrapped = get_debias_model(pooled_linear_model(), RRClArCConfig(layer="0", cav=random_cav(6, layer="0"),
                                                                    freeze="none")).train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither a single image nor two identical ones can show independence
        wrapped(torch.randn(1, 3, 4, 4), labels=torch.zeros(1, dtype=torch.long))
        wrapped(torch.ones(2, 3, 4, 4), labels=torch.zeros(2, dtype=torch.long))
        for _ in range(LINEARITY_EVIDENCE_BATCHES - 1):  # not yet enough evidence
            wrapped(torch.randn(2, 3, 4, 4), labels=torch.zeros(2, dtype=torch.long))
    with pytest.warns(UserWarning, match="Only linear operations"):
        wrapped(torch.randn(2, 3, 4, 4), labels=torch.zeros(2, dtype=torch.long))


def test_one_batch_of_similar_images_in_an_untrained_relu_net_is_no_evidence():
    # The README's stand-in: an untrained resnet18, 8 images sharing a bright corner. Their ReLU patterns after
    # layer3 happen to coincide, so that one batch shows the same gradient for every image; the network is not
    # affine there, and a batch of other images shows it. No warning.
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    wrapped = get_debias_model(model, RRClArCConfig(layer="layer3", cav=random_cav(256, layer="layer3"))).train()
    similar = torch.randn(8, 3, 32, 32)
    similar[:, :, :8, :8] = 3.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wrapped(similar, labels=torch.zeros(8, dtype=torch.long))
        assert wrapped.method._input_independent_batches == 1  # the premise: this batch alone looks affine
        for _ in range(LINEARITY_EVIDENCE_BATCHES):
            wrapped(torch.randn(8, 3, 32, 32) * 3, labels=torch.zeros(8, dtype=torch.long))


def test_the_input_dependence_measure_on_affine_and_relu_tails():
    a = torch.randn(5, 4, 3, 3, requires_grad=True)
    head = nn.Linear(4, 3)
    affine = head(a.mean(dim=(2, 3)))
    assert latent_gradient_depends_on_input(affine, a) is False
    relu = head(torch.relu(a).mean(dim=(2, 3)))
    assert latent_gradient_depends_on_input(relu, a) is True
    assert latent_gradient_depends_on_input(head(a[:1].mean(dim=(2, 3))), a[:1]) is None  # one image
    assert latent_gradient_depends_on_input(head(a.mean(dim=(2, 3))) * 0, a) is None  # zero gradient


# --------------------------------------------------------------------------- TCAV: ours and the authors'
def test_tcav_pooled_and_per_position_sensitivity_match_their_definitions():
    import evaluate
    import numpy as np

    from hf_debias.metrics import TCAV_MODULE, directional_derivatives, tcav

    torch.manual_seed(0)  # residual branches not zero-initialised, so per-position derivatives differ in sign
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3, zero_init_last=False).eval()
    cav = random_cav(48, layer="layer2")
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    # The authors' measure_tcav.py, one image at a time: g = d logit_c / d a at the layer, s = sum_c g_c h_c per
    # position; sensitivity = mean |s| over images and positions, mean_tcav_quotient = share of positive mean_p s.
    acts = {}
    handle = model.layer2.register_forward_hook(lambda module, args, out: acts.__setitem__("a", out))
    per_position, pooled_positive = [], 0
    for image in images:
        logit = model(image[None])[:, 1]
        (grad,) = torch.autograd.grad(logit.sum(), acts["a"])
        s = (grad * cav.vector[None, :, None, None]).sum(1)  # [1, H, W]
        per_position.append(s.abs().flatten())
        pooled_positive += int(s.mean((1, 2)).item() > 0)
    handle.remove()
    authors_sensitivity = torch.cat(per_position).mean().item()

    pooled = directional_derivatives(model, "layer2", cav, images, target_class=1, batch_size=1)
    positions = directional_derivatives(model, "layer2", cav, images, target_class=1, batch_size=1,
                                        per_position=True)  # one image at a time, as the authors
    assert pooled.shape == (6,) and positions.shape == (6, 16)  # layer2 of a 32x32 input is 4x4
    assert torch.allclose(positions.mean(dim=1), pooled, atol=1e-7)
    result = tcav(positions)
    assert set(result) == {"tcav_score", "tcav_pooled_sensitivity", "tcav_position_sensitivity"}
    assert result["tcav_position_sensitivity"] == pytest.approx(authors_sensitivity, rel=1e-5)
    assert result["tcav_score"] == pytest.approx(pooled_positive / 6)
    assert result["tcav_pooled_sensitivity"] == pytest.approx(pooled.abs().mean().item(), rel=1e-5)
    assert result["tcav_position_sensitivity"] > result["tcav_pooled_sensitivity"]  # signs cancel in the mean
    assert tcav(pooled) == {key: pytest.approx(result[key], rel=1e-6) for key in ("tcav_score",
                                                                                 "tcav_pooled_sensitivity")}
    module = evaluate.load(TCAV_MODULE, "per_position").compute(predictions=positions.numpy().tolist())
    assert module["tcav_position_sensitivity"] == pytest.approx(authors_sensitivity, rel=1e-5)
    with pytest.raises(ValueError, match=r"shaped \[N\] or \[N, positions\]"):
        tcav(np.zeros((2, 3, 4)))


def test_the_old_tcav_sensitivity_key_still_reads_with_a_future_warning():
    from hf_debias.metrics import tcav

    result = tcav([0.5, -0.25, 1.0])
    assert "tcav_sensitivity" not in result and list(result) == ["tcav_score", "tcav_pooled_sensitivity"]
    with pytest.warns(FutureWarning, match="'tcav_sensitivity'.*now 'tcav_pooled_sensitivity'"):
        assert result["tcav_sensitivity"] == pytest.approx(1.75 / 3)
    with pytest.warns(FutureWarning):
        assert result.get("tcav_sensitivity") == pytest.approx(1.75 / 3)
    assert result.get("missing", 7) == 7
    with pytest.raises(KeyError):
        result["missing"]
