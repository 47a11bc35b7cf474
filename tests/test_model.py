"""The DebiasModel wrapper: unchanged outputs, penalty in the loss, clean removal, plain-loop training."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from hf_debias import DebiasModel, EnDConfig, get_debias_model
from hf_debias.functional import end_terms

torch.manual_seed(0)


def tiny_resnet(num_classes=4):
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=num_classes)


def batch(n=8, size=32, num_classes=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, size, size, generator=generator),
            torch.randint(0, num_classes, (n,), generator=generator),
            torch.randint(0, 3, (n,), generator=generator))


@pytest.mark.parametrize("name", ["resnet18", "test_vit", "test_efficientnet", "simple_convnet"])
@pytest.mark.parametrize("layer", [None, "features"])
def test_outputs_unchanged_when_forward_is_not_altered(name, layer):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=4).eval()
    size = 16 if name == "simple_convnet" else 32
    x, y, b = batch(size=size)
    expected = model(x)
    if layer == "features":
        layer = model.feature_info[-1]["module"]
    wrapped = get_debias_model(model, EnDConfig(layer=layer, normalize_forward=False)).eval()
    torch.testing.assert_close(wrapped(x).logits, expected, rtol=0, atol=0)
    out = wrapped.train()(x, labels=y, bias_labels=b)
    assert out.penalty is not None and torch.isfinite(out.loss)


def test_loss_is_cross_entropy_plus_weighted_penalty_on_the_classifier_input():
    model = tiny_resnet()
    x, y, b = batch()
    config = EnDConfig(alpha=0.5, beta=2.0)
    wrapped = get_debias_model(model, config).train()
    captured = {}
    handle = model.fc.register_forward_pre_hook(lambda m, args: captured.setdefault("features", args[0]))
    out = wrapped(x, labels=y, bias_labels=b)
    handle.remove()
    r_ortho, r_par = end_terms(captured["features"], y, b)
    torch.testing.assert_close(out.ce_loss, F.cross_entropy(out.logits, y))
    torch.testing.assert_close(out.loss, out.ce_loss + 0.5 * r_ortho + 2.0 * r_par)
    torch.testing.assert_close(out.penalty_terms["end_r_ortho"], r_ortho.detach())
    assert wrapped.method.layer.spec == "fc:input"


def test_eval_mode_loss_is_plain_cross_entropy_and_needs_no_bias_labels():
    wrapped = get_debias_model(tiny_resnet(), EnDConfig()).eval()
    x, y, _ = batch()
    out = wrapped(x, labels=y)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, y))
    assert out.penalty is None and out.penalty_terms is None


def test_penalty_changes_the_gradients_of_layers_before_the_bottleneck():
    x, y, b = batch()
    grads = []
    for alpha in (0.0, 1.0):
        model = tiny_resnet()
        wrapped = get_debias_model(model, EnDConfig(alpha=alpha, beta=alpha, layer="layer3")).train()
        wrapped(x, labels=y, bias_labels=b).loss.backward()
        grads.append(model.conv1.weight.grad.clone())  # the stem, before layer3
    assert not torch.allclose(grads[0], grads[1])


def test_normalize_forward_puts_unit_norm_features_into_the_forward_pass():
    model = tiny_resnet().eval()
    x, _, _ = batch()
    plain = model(x)
    wrapped = get_debias_model(model, EnDConfig(normalize_forward=True)).eval()
    features = {}
    handle = model.fc.register_forward_pre_hook(lambda m, args: features.setdefault("x", args[0]))
    logits = wrapped(x).logits
    handle.remove()
    torch.testing.assert_close(features["x"].norm(dim=1), torch.ones(8))
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        expected = model.fc(F.normalize(pooled, dim=1))
    torch.testing.assert_close(logits, expected)
    assert not torch.allclose(logits, plain)
    with pytest.warns(UserWarning, match="at 'fc:input'; the unloaded model no longer applies"):
        unloaded = wrapped.unload()
    torch.testing.assert_close(unloaded(x), plain)


def test_unload_removes_every_hook_and_returns_the_plain_model():
    model = tiny_resnet().eval()
    x, y, b = batch()
    expected = model(x)
    hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    wrapped = get_debias_model(model, EnDConfig(layer="layer4", normalize_forward=False))
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks_before + 1
    plain = wrapped.unload()
    assert plain is model
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks_before
    torch.testing.assert_close(plain(x), expected, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="unloaded"):
        wrapped(x)
    again = get_debias_model(plain, EnDConfig())  # a clean model can be wrapped again
    assert isinstance(again, DebiasModel)


def test_normalize_forward_is_the_default():
    # None: "train" where that is exact, else "always" (helper F's portable EnD); either way the training
    # forward feeds the classifier unit-norm features
    assert EnDConfig().normalize_forward is None
    model = tiny_resnet()
    wrapped = get_debias_model(model, EnDConfig()).train()
    captured = {}
    handle = model.fc.register_forward_pre_hook(lambda m, args: captured.setdefault("features", args[0]))
    x, y, b = batch()
    wrapped(x, labels=y, bias_labels=b)
    handle.remove()
    torch.testing.assert_close(captured["features"].norm(dim=1), torch.ones(len(x)))


def test_attributes_fall_through_to_the_wrapped_model():
    model = tiny_resnet()
    wrapped = get_debias_model(model, EnDConfig())
    assert wrapped.get_classifier() is model.fc
    assert wrapped.pretrained_cfg == model.pretrained_cfg


def test_plain_pytorch_training_loop_reduces_the_penalty():
    torch.manual_seed(0)
    model = timm.create_model("simple_convnet", num_classes=3)
    wrapped = get_debias_model(model, EnDConfig(alpha=1.0, beta=1.0))
    optimizer = torch.optim.Adam(wrapped.parameters(), lr=1e-2)
    x, y, b = batch(n=32, size=16, num_classes=3)
    first = None
    for _ in range(30):
        out = wrapped(x, labels=y, bias_labels=b)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        first = first if first is not None else out.penalty.item()
    assert out.penalty.item() < 0.5 * first


def test_gradient_checkpointing_recompute_does_not_replace_the_captured_activation():
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Tanh())
            self.fc = torch.nn.Linear(6, 3)

        def forward(self, x):
            return self.fc(checkpoint(self.body, x, use_reentrant=False))

    torch.manual_seed(0)
    model = Checkpointed()
    wrapped = get_debias_model(model, EnDConfig(layer="body")).train()
    x, y, b = torch.randn(8, 6, requires_grad=True), torch.randint(0, 3, (8,)), torch.randint(0, 2, (8,))
    out = wrapped(x, labels=y, bias_labels=b)
    captured = wrapped.method.hook.activation
    out.loss.backward()
    assert wrapped.method.hook.activation is captured


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda w, x, y, b: w(x, labels=y), "EnD needs bias_labels"),
        (lambda w, x, y, b: w(x, labels=y, bias_labels=b[:-1]), "the batch has 8 samples"),
        (lambda w, x, y, b: w(x, labels=y.float(), bias_labels=b), "integer class ids"),
        (lambda w, x, y, b: w(x, labels=y[:, None], bias_labels=b), "must be 1-D"),
        (lambda w, x, y, b: w(x[0], labels=y, bias_labels=b), "the batch has 3 samples"),
        (lambda w, x, y, b: w(x * float("nan"), labels=y, bias_labels=b), "NaN or infinite"),
    ],
)
def test_bad_inputs_to_the_wrapper_raise_value_errors(call, message):
    wrapped = get_debias_model(tiny_resnet(), EnDConfig()).train()
    x, y, b = batch()
    with pytest.raises(ValueError, match=message):
        call(wrapped, x, y, b)


def test_unknown_layer_names_the_closest_valid_layers():
    with pytest.raises(ValueError, match=r"Layer 'layr3' not found in ResNet\. Closest valid layers: \['layer3'"):
        get_debias_model(tiny_resnet(), EnDConfig(layer="layr3"))


def test_wrapping_twice_or_wrapping_a_non_module_fails():
    wrapped = get_debias_model(tiny_resnet(), EnDConfig())
    with pytest.raises(ValueError, match="already a DebiasModel"):
        get_debias_model(wrapped, EnDConfig())
    with pytest.raises(ValueError, match="torch.nn.Module"):
        get_debias_model("resnet18", EnDConfig())
    with pytest.raises(ValueError, match="DebiasConfig"):
        get_debias_model(tiny_resnet(), {"alpha": 1})


def test_labels_of_any_integer_dtype_give_the_int64_loss():
    x, y, b = batch()
    wrapped = get_debias_model(tiny_resnet(), EnDConfig(alpha=0.5, beta=2.0)).train()
    reference = wrapped(x, labels=y, bias_labels=b).loss.item()
    for dtype in (torch.int8, torch.int16, torch.int32, torch.uint8):
        out = wrapped(x, labels=y.to(dtype), bias_labels=b.to(dtype))
        assert out.loss.item() == pytest.approx(reference, rel=1e-6), dtype
    with pytest.raises(ValueError, match="bias_labels must hold integer class ids .* got dtype torch.bool"):
        wrapped(x, labels=y, bias_labels=b > 0)


def test_an_empty_batch_is_a_clear_error():
    x, y, b = batch()
    wrapped = get_debias_model(tiny_resnet(), EnDConfig()).train()
    with pytest.raises(ValueError, match="The batch is empty: pixel_values has 0 samples"):
        wrapped(x[:0], labels=y[:0], bias_labels=b[:0])


def test_the_penalty_is_differentiable_so_a_loss_of_ones_own_can_replace_the_cross_entropy():
    x, y, b = batch()
    grads = []
    for combine in (lambda out: out.loss, lambda out: F.cross_entropy(out.logits, y) + out.penalty):
        model = tiny_resnet()
        out = get_debias_model(model, EnDConfig(alpha=0.5, beta=2.0)).train()(x, labels=y, bias_labels=b)
        combine(out).backward()
        grads.append(model.conv1.weight.grad.clone())  # the stem: before the bottleneck
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0])
