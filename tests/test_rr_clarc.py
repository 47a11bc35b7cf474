"""RR-ClArC: the penalty's value in closed form, every gradient target x aggregation on a conv net and a ViT, the
attention fallback, freeze policies, and bad input."""

import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from hf_debias import CAV, RRClArCConfig, get_debias_model
from hf_debias.functional.rr_clarc import AGGREGATIONS, GRADIENT_TARGETS, gradient_target_output, rr_clarc_penalty


def pooled_linear_model(channels=6, classes=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(channels, classes))


def random_cav(channels, seed=0, layer=None):
    return CAV(torch.randn(channels, generator=torch.Generator().manual_seed(seed)), concept="test", layer=layer)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_penalty_matches_closed_form_on_a_pooled_linear_head(aggregation):
    # logits = W avgpool(a) + b, so the gradient of logit c with respect to every position of a is W_c / (H W).
    model = pooled_linear_model()
    cav = random_cav(6, layer="0")
    config = RRClArCConfig(layer="0", cav=cav, lamb=2.5, gradient_target="class", target_class=1,
                           aggregation=aggregation, freeze="none")
    wrapped = get_debias_model(model, config)
    x = torch.randn(5, 3, 4, 4)
    with pytest.warns(UserWarning, match="Only linear operations"):
        out = wrapped.train()(x, labels=torch.zeros(5, dtype=torch.long))
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


def _conv_model():
    return timm.create_model("test_resnet", pretrained=False, num_classes=3)


def _vit_model():
    return timm.create_model("test_vit", pretrained=False, num_classes=3, img_size=32)


@pytest.mark.parametrize("target", GRADIENT_TARGETS)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("kind,layer,channels", [("conv", "layer2", 48), ("vit", "blocks.0", 64)])
def test_every_target_and_aggregation_trains_conv_and_vit(kind, layer, channels, target, aggregation):
    torch.manual_seed(0)
    model = _conv_model() if kind == "conv" else _vit_model()
    config = RRClArCConfig(layer=layer, cav=random_cav(channels, layer=layer), lamb=1.0, gradient_target=target,
                           target_class=2 if target == "class" else None, aggregation=aggregation, freeze="none")
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
    config = RRClArCConfig(layer="blocks.0", cav=random_cav(64, layer="blocks.0"), freeze="none")
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
        wrapped.train()(torch.randn(3, 3, 4, 4), labels=torch.zeros(3, dtype=torch.long))
    hints = [str(w.message) for w in caught if "pooling='mean'" in str(w.message)]
    assert bool(hints) == (pooling == "max")
