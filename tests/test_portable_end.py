"""EnD's portable default (normalize_forward="train"): trained with the normalised forward, deployed as the plain
network, so that plain timm, transformers, ``pipeline`` and ``hf_debias.load_model`` all predict alike. No network."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn
from transformers import (AutoModelForImageClassification, TimmWrapperConfig, TimmWrapperForImageClassification,
                          ViTConfig, ViTForImageClassification, ViTImageProcessor, pipeline)

from hf_debias import DebiasConfig, EnDConfig, get_debias_model, load_model
from hub_cache import offline_cache, publish

LABELS = {0: "zero", 1: "one", 2: "two"}
X = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
Y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
B = torch.tensor([0, 0, 0, 1, 1, 1, 0, 1])
IMAGES = [Image.fromarray((np.random.RandomState(i).rand(32, 32, 3) * 255).astype(np.uint8)) for i in range(4)]


def timm_model():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=3)


def timm_wrapper_model():
    torch.manual_seed(0)
    return TimmWrapperForImageClassification(TimmWrapperConfig(architecture="test_resnet", num_labels=3))


def vit_model():
    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=2, intermediate_size=32, id2label=LABELS,
                                               label2id={v: k for k, v in LABELS.items()}))


BUILDERS = {"timm": timm_model, "timm_wrapper": timm_wrapper_model, "transformers_vit": vit_model}


def logits(model, batch=X):
    with torch.no_grad():
        out = model(batch)
    return out if isinstance(out, torch.Tensor) else out.logits


def trained(model, config=None, steps=3):
    """A few AdamW steps (weight decay on) with EnD; returns the wrapper in eval mode."""
    wrapped = get_debias_model(model, config or EnDConfig(alpha=1.0))
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=1e-2, weight_decay=0.1)
    wrapped.train()
    for _ in range(steps):
        out = wrapped(X, labels=Y, bias_labels=B)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    return wrapped.eval()


def head_of(wrapped):
    return wrapped.method.layer.module


def normalised_logits(wrapped, batch=X):
    """The training-time network on ``batch``: eval mode everywhere (BatchNorm, dropout) except the head, whose
    training flag switches the normalisation on."""
    head = head_of(wrapped)
    head.train()
    try:
        return logits(wrapped, batch)
    finally:
        head.eval()


# --------------------------------------------------------------------------- one test per path
@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_default_end_loads_everywhere_with_equal_predictions(tmp_path, monkeypatch, kind):
    cache = offline_cache(monkeypatch, tmp_path)
    wrapped = trained(BUILDERS[kind]())
    assert wrapped.method.config.normalize_forward == "train" and not wrapped.method.alters_forward
    bias = head_of(wrapped).bias
    assert torch.equal(bias, torch.zeros_like(bias)) and not bias.requires_grad  # AdamW's weight decay did not move it
    expected = logits(wrapped)
    wrapped.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert not any(key.startswith("hf_debias_") for key in config)  # not guarded
    assert DebiasConfig.from_pretrained(tmp_path / "saved").normalize_forward in (None, "train")
    publish(cache, tmp_path / "saved", "org/end-portable")

    loaded = {"auto": AutoModelForImageClassification.from_pretrained("org/end-portable").eval(),
              "hf_debias": load_model("org/end-portable")}
    if kind != "transformers_vit":
        loaded["timm"] = timm.create_model("hf-hub:org/end-portable", pretrained=True).eval()
    for name, model in loaded.items():
        torch.testing.assert_close(logits(model), expected, rtol=0, atol=1e-6, msg=name)
        assert torch.equal(logits(model).argmax(1), expected.argmax(1)), name
    assert loaded["hf_debias"].method.config.normalize_forward == "train"

    processor = {"image_processor": ViTImageProcessor(size={"height": 32, "width": 32})} \
        if kind == "transformers_vit" else {}
    classify = pipeline("image-classification", model="org/end-portable", **processor)
    answers = classify(IMAGES, top_k=3)
    pixels = classify.image_processor(IMAGES, return_tensors="pt")["pixel_values"]
    ours = logits(loaded["hf_debias"], pixels)
    id2label = loaded["auto"].config.id2label
    for answer, row in zip(answers, ours):
        assert [entry["label"] for entry in answer] == [id2label[int(i)] for i in row.argsort(descending=True)]
        np.testing.assert_allclose([entry["score"] for entry in answer],
                                   row.softmax(0).sort(descending=True).values.numpy(), atol=1e-5)
    if kind == "transformers_vit":
        assert answers[0][0]["label"] in LABELS.values()


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_training_time_ranking_equals_the_deployed_ranking(kind):
    wrapped = trained(BUILDERS[kind]())
    deployed, normalised = logits(wrapped), normalised_logits(wrapped)
    assert not torch.allclose(deployed, normalised)  # the scores differ ...
    assert torch.equal(deployed.argsort(1), normalised.argsort(1))  # ... the ranking does not
    ratio = deployed / normalised  # every logit of a sample is divided by the same ||f|| > 0
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4, atol=0)
    assert (ratio > 0).all()


def test_training_forward_is_the_normalised_network():
    """In training mode the head sees unit-norm features: its output is W·f/||f|| (bias 0)."""
    wrapped = get_debias_model(timm_model(), EnDConfig())
    seen = {}
    head = head_of(wrapped)
    head.register_forward_pre_hook(lambda module, args: seen.update(norms=args[0].norm(dim=1)))
    wrapped.train()
    wrapped(X, labels=Y, bias_labels=B)
    torch.testing.assert_close(seen["norms"], torch.ones(len(X)), rtol=0, atol=1e-5)
    wrapped.eval()
    wrapped(X)
    assert not torch.allclose(seen["norms"], torch.ones(len(X)), atol=1e-2)  # deployed: the plain network


# --------------------------------------------------------------------------- the bias while attached
def test_bias_is_zeroed_frozen_logged_and_left_at_zero_by_unload(caplog):
    model = timm_model()
    assert model.fc.bias.abs().sum() > 0
    with caplog.at_level(logging.WARNING, logger="hf_debias.methods.end.portable"):
        wrapped = get_debias_model(model, EnDConfig())
    assert "set the bias of the classifier head 'fc' to 0 and froze it" in caplog.text
    assert torch.equal(model.fc.bias, torch.zeros(3)) and not model.fc.bias.requires_grad
    plain = wrapped.unload()
    assert torch.equal(plain.fc.bias, torch.zeros(3)) and plain.fc.bias.requires_grad  # value kept, flag restored
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_debias.methods.end.portable"):
        get_debias_model(plain, EnDConfig())  # already 0 (e.g. hf_debias.load_model): nothing to say
    assert caplog.text == ""


def test_a_bias_moved_away_from_zero_is_refused_at_eval_and_save(tmp_path):
    wrapped = get_debias_model(timm_model(), EnDConfig())
    head_of(wrapped).bias.requires_grad_(True)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    wrapped.train()
    wrapped(X, labels=Y, bias_labels=B).loss.backward()
    optimizer.step()
    with pytest.raises(RuntimeError, match="bias of the classifier head 'fc' is no longer 0"):
        wrapped.eval()
    with pytest.raises(RuntimeError, match="no longer 0"):
        wrapped.save_pretrained(tmp_path / "saved")


# --------------------------------------------------------------------------- where the form is not exact
class MlpHeadNet(nn.Module):
    """Pooled features into a two-layer head: the ranking of its outputs depends on the feature norm."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        return self.classifier(self.features(x))


class ScaledLogitsNet(nn.Module):
    """A linear head, but something runs after it (a shift), so its output is not the logits."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(8, 3)

    def forward(self, x):
        return self.classifier(self.features(x)) + torch.tensor([0.0, 1.0, 2.0])


class TwoHeadNet(nn.Module):
    """Two heads averaged into the logits, as in timm's distilled models (``get_classifier`` returns both)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head, self.head_dist = nn.Linear(8, 3), nn.Linear(8, 3)

    def get_classifier(self):
        return self.head, self.head_dist

    def forward(self, x):
        features = self.features(x)
        return (self.head(features) + self.head_dist(features)) / 2


@pytest.mark.parametrize("build, layer, problem", [
    (TwoHeadNet, None, "TwoHeadNet has 2 classifier heads"),
    (timm_model, "layer2", "is not the input of the classifier head \\('fc:input'\\)"),
    (MlpHeadNet, None, "the classifier head 'classifier' is a Sequential, not a linear layer"),
])
def test_not_exact_raises_when_asked_for_and_falls_back_to_guarded_by_default(tmp_path, build, layer, problem):
    with pytest.raises(ValueError, match=problem + ".*Use normalize_forward='always'"):
        get_debias_model(build(), EnDConfig(layer=layer, normalize_forward="train"))
    model = build()
    bias_before = [p.clone() for n, p in model.named_parameters() if n.endswith("bias")]
    with pytest.warns(UserWarning, match=problem + ".*using normalize_forward='always' instead"):
        wrapped = get_debias_model(model, EnDConfig(layer=layer))
    assert wrapped.method.config.normalize_forward == "always" and wrapped.method.alters_forward
    assert all(torch.equal(a, b) for a, b in zip(
        bias_before, [p for n, p in model.named_parameters() if n.endswith("bias")]))  # nothing was zeroed


def test_a_head_whose_output_is_not_the_logits_is_caught_on_the_first_step():
    with pytest.raises(ValueError, match="output of the classifier head 'classifier' is not the model's logits"):
        get_debias_model(ScaledLogitsNet(), EnDConfig(normalize_forward="train")).train()(X, labels=Y, bias_labels=B)
    model = ScaledLogitsNet()
    wrapped = get_debias_model(model, EnDConfig()).train()
    assert wrapped.method.config.normalize_forward == "train"
    with pytest.warns(UserWarning, match="switching to normalize_forward='always' before the first update"):
        wrapped(X, labels=Y, bias_labels=B)
    assert wrapped.method.config.normalize_forward == "always" and wrapped.method.alters_forward
    assert model.classifier.bias.requires_grad
    wrapped.eval()
    features = model.features(X)
    expected = model.classifier(torch.nn.functional.normalize(features, dim=1)) + torch.tensor([0.0, 1.0, 2.0])
    torch.testing.assert_close(logits(wrapped), expected)  # the guarded network, in eval mode too


def test_sequential_head_of_homogeneous_modules_is_exact():
    model = MlpHeadNet()
    model.classifier = nn.Sequential(nn.Dropout(0.1), nn.Identity(), nn.Linear(8, 3))
    wrapped = get_debias_model(model, EnDConfig())
    assert wrapped.method.config.normalize_forward == "train"
    assert torch.equal(model.classifier[2].bias, torch.zeros(3))
    deployed, normalised = logits(wrapped.eval()), normalised_logits(wrapped)
    assert torch.equal(deployed.argmax(1), normalised.argmax(1))


# --------------------------------------------------------------------------- the option itself
def test_option_values_defaults_and_old_booleans(tmp_path):
    assert EnDConfig().normalize_forward is None  # resolved per model: 'train' where exact
    assert EnDConfig(normalize_forward=True).normalize_forward == "always"
    assert EnDConfig(normalize_forward=False).normalize_forward == "never"
    with pytest.raises(ValueError, match="normalize_forward='yes' is not valid; choose one of: 'train', 'always', "
                                         "'never'"):
        EnDConfig(normalize_forward="yes")
    old = tmp_path / "old"
    old.mkdir()
    (old / "debias_config.json").write_text(json.dumps({"debias_method": "end", "layer": None, "normalize_forward": True}))
    assert DebiasConfig.from_pretrained(old).normalize_forward == "always"
    for form in ("train", "always", "never"):
        config = EnDConfig(normalize_forward=form)
        assert DebiasConfig.from_json_string(config.to_json_string()) == config
    wrapped = get_debias_model(timm_model(), EnDConfig(normalize_forward="never"))
    assert not wrapped.method.alters_forward and wrapped.model.fc.bias.requires_grad


def test_always_is_the_guarded_form_and_never_is_plain(tmp_path):
    always = trained(timm_model(), EnDConfig(normalize_forward="always"))
    assert always.method.alters_forward
    always.save_pretrained(tmp_path / "always")
    assert "hf_debias_architecture" in json.loads((tmp_path / "always" / "config.json").read_text())
    never = trained(timm_model(), EnDConfig(normalize_forward="never"))
    never.save_pretrained(tmp_path / "never")
    assert "hf_debias_architecture" not in json.loads((tmp_path / "never" / "config.json").read_text())
