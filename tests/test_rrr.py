"""RRR (Right for the Right Reasons): the penalty in closed form on a linear model (both forms), zero without mask
or where the model does not look, a shortcut region's input gradient trained away, mask checks, the config's JSON
round trip, freeze policies, DebiasTrainer with a mask column, the CLI flags, and the saved model loading in timm."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

from hf_debias import DebiasConfig, DebiasModel, RRRConfig, get_debias_model, load_model
from hf_debias.functional.rrr import rrr_penalty
from hf_debias.trainer import DebiasTrainer, DebiasTrainingArguments
from hub_cache import offline_cache, publish

EPS = 1e-5  # the RR-ClArC code's log(softmax + 1e-5)


def linear_model(classes=3, size=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, classes))


def corner_masks(n, size=4, rows=2, cols=2, dtype=torch.bool):
    masks = torch.zeros(n, size, size, dtype=dtype)
    masks[:, :rows, :cols] = 1
    return masks


def input_gradient_by_hand(model, x, target):
    """d target / dx for logits = W x + b: W^T (d target / d logits), with the logits' derivative in closed form."""
    weight, bias = model[1].weight.detach(), model[1].bias.detach()
    p = torch.softmax(x.flatten(1) @ weight.T + bias, dim=1)
    k = p.shape[1]
    if target == "log_prob_sum":  # d/dz_j sum_k log p_k = 1 - K p_j
        dz = 1 - k * p
    else:  # d/dz_j mean_k log(p_k + eps) = (p_j / q_j - p_j sum_k p_k / q_k) / K
        q = p + EPS
        dz = (p / q - p * (p / q).sum(1, keepdim=True)) / k
    return (dz @ weight).view_as(x)


# --------------------------------------------------------------------------- the penalty's value
@pytest.mark.parametrize("target, aggregation", [("log_prob_sum", "l2"), ("official_logprobs", "official_cosine"),
                                                 ("official_logprobs", "l2")])
def test_penalty_equals_the_hand_computed_input_gradient_inside_the_mask(target, aggregation):
    model = linear_model()
    wrapped = get_debias_model(model, RRRConfig(lamb=2.5, freeze="none", gradient_target=target,
                                                aggregation=aggregation)).train()
    x, labels = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0, 1])
    masks = corner_masks(5)
    masks[4] = False  # an image without artifact counts 0 in the batch mean
    out = wrapped(x, labels=labels, masks=masks)

    grad = input_gradient_by_hand(model, x, target)
    inside = masks[:, None].float()
    if aggregation == "l2":
        expected = ((grad * inside) ** 2).sum((1, 2, 3))
    else:
        heatmap = grad.sum(1).abs().flatten(1)
        expected = (heatmap * masks.flatten(1)).sum(1) / (heatmap.norm(dim=1) * masks.flatten(1).float().norm(dim=1)
                                                         ).clamp_min(1e-12)
    expected = expected.sum() / 5
    assert expected > 0
    assert out.penalty_terms["rrr_penalty"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert out.penalty.item() == pytest.approx(2.5 * out.penalty_terms["rrr_penalty"].item(), rel=1e-6)
    ce = F.cross_entropy(out.logits, labels)
    assert out.loss.item() == pytest.approx(ce.item() + out.penalty.item(), rel=1e-6)
    out.loss.backward()  # the double backward reaches the weights
    assert model[1].weight.grad.abs().sum() > 0


def test_penalty_is_zero_for_empty_masks_and_where_the_model_does_not_look():
    model = linear_model()
    wrapped = get_debias_model(model, RRRConfig(lamb=10.0, freeze="none")).train()
    x, labels = torch.randn(4, 3, 4, 4), torch.tensor([0, 1, 2, 0])
    empty = wrapped(x, labels=labels, masks=torch.zeros(4, 4, 4))
    assert empty.penalty.item() == 0.0 and empty.loss.item() == pytest.approx(empty.ce_loss.item())
    with torch.no_grad():  # the weights of the corner pixels are 0: the gradient there is exactly 0
        model[1].weight.view(3, 3, 4, 4)[:, :, :2, :2] = 0
    blind = wrapped(x, labels=labels, masks=corner_masks(4))
    assert blind.penalty_terms["rrr_penalty"].item() == 0.0
    assert wrapped(x, labels=labels, masks=~corner_masks(4)).penalty_terms["rrr_penalty"].item() > 0
    # off in eval mode, with lamb = 0 and without gradients: no masks needed
    assert wrapped.eval()(x, labels=labels).penalty is None
    control = get_debias_model(linear_model(), RRRConfig(lamb=0.0, freeze="none")).train()
    assert control(x, labels=labels).penalty_terms["rrr_penalty"].item() == 0.0


def test_penalty_function_soft_masks_weight_the_squared_gradient():
    grad = torch.ones(1, 2, 2, 2)
    soft = torch.tensor([[[0.5, 0.0], [0.0, 1.0]]])
    assert rrr_penalty(grad, soft, aggregation="l2").item() == pytest.approx(2 * (0.25 + 1.0))


# --------------------------------------------------------------------------- training removes the shortcut
def shortcut_data(n=64, size=16, seed=0):
    """Class = the sign of a noisy shift of the centre (the true signal) and, noise-free, of a +-1 patch in the
    top-right corner (the shortcut, masked)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    sign = labels.float() * 2 - 1
    x = torch.randn(n, 3, size, size, generator=g)
    x[:, :, 6:10, 6:10] += 0.5 * sign[:, None, None, None]
    x[:, :, :4, -4:] = sign[:, None, None, None]
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    masks[:, :4, -4:] = True
    return x, labels, masks


def masked_gradient(model, x, masks):
    """Ross et al.'s measure on held-out images: mean_n sum_mask (d sum_k log p_k / dx)^2, and its share of the
    whole squared input gradient."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.log_softmax(model(x).logits, 1).sum(), x)
    inside = (grad * masks[:, None]).pow(2).sum() / len(x)
    return inside.item(), (inside * len(x) / grad.pow(2).sum()).item()


def train(lamb, aggregation="l2", steps=60):
    """A small MLP (its input gradient reflects what it reads; a BatchNorm + tanh convnet this small saturates on
    the noise-free patch, and its gradient there is ~0 even while it relies on it)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 32), nn.ReLU(), nn.Linear(32, 2))
    wrapped = get_debias_model(model, RRRConfig(lamb=lamb, aggregation=aggregation, freeze="none"))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, labels, masks = shortcut_data()
    wrapped.train()
    for step in range(steps):
        batch = slice(16 * (step % 4), 16 * (step % 4 + 1))
        loss = wrapped(x[batch], labels=labels[batch], masks=masks[batch]).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return wrapped.eval()


@pytest.mark.parametrize("aggregation, lamb", [("l2", 10.0), ("official_cosine", 1.0)])
def test_training_drives_the_input_gradient_in_the_masked_shortcut_down(aggregation, lamb):
    held_x, held_labels, held_masks = shortcut_data(seed=1)
    flipped = held_x.clone()
    flipped[:, :, :4, -4:] *= -1  # the shortcut now points to the other class
    results = {}
    for name, model in (("vanilla", train(0.0)), ("rrr", train(lamb, aggregation))):
        inside, share = masked_gradient(model, held_x, held_masks)
        with torch.no_grad():
            flipped_accuracy = (model(flipped).logits.argmax(1) == held_labels).float().mean().item()
        results[name] = inside, share, flipped_accuracy
    # measured (l2): vanilla 0.66 inside the mask (26% of the squared gradient), 0% right on flipped patches;
    # RRR 3e-4 (0.03%), 97% right. official_cosine: 0.008 (0.2%), 97% right.
    assert results["vanilla"][2] <= 0.1 and results["vanilla"][1] > 0.2
    assert results["rrr"][0] < 0.02 * results["vanilla"][0]
    assert results["rrr"][1] < 0.02 * results["vanilla"][1]
    assert results["rrr"][2] >= 0.9


# --------------------------------------------------------------------------- bad masks
@pytest.mark.parametrize("masks, message", [
    (torch.ones(4, 3, 4, 4), r"shaped \[N, H, W\] or \[N, 1, H, W\], got \(4, 3, 4, 4\)"),
    (torch.ones(4, 16), r"shaped \[N, H, W\] or \[N, 1, H, W\], got \(4, 16\)"),
    (torch.ones(4, 8, 8), r"\(4, 8, 8\) do not match the images \(4, 3, 4, 4\).*\(4, 4\)"),
    (torch.ones(3, 1, 4, 4), r"\(3, 1, 4, 4\) do not match the images .*4 in this batch"),
    (torch.full((4, 4, 4), 255, dtype=torch.uint8), r"values in \[0, 1\].*\[255, 255\].*divide 0 / 255 masks"),
    (torch.full((4, 4, 4), -0.5), r"values in \[0, 1\]"),
    (torch.full((4, 4, 4), float("nan")), r"values in \[0, 1\]"),
    ([[0, 1]], r"must be a bool or numeric torch.Tensor.*got list"),
])
def test_bad_masks_fail_with_the_shape_and_column(masks, message):
    wrapped = get_debias_model(linear_model(), RRRConfig(freeze="none", mask_column="region")).train()
    with pytest.raises(ValueError, match=message) as error:
        wrapped(torch.randn(4, 3, 4, 4), labels=torch.zeros(4, dtype=torch.long), masks=masks)
    assert "'region'" in str(error.value)


def test_missing_masks_in_training_name_the_mask_column():
    wrapped = get_debias_model(linear_model(), RRRConfig(freeze="none", mask_column="region")).train()
    with pytest.raises(ValueError, match=r"needs a mask per image.*column 'region'.*--rrr_mask_column"):
        wrapped(torch.randn(2, 3, 4, 4), labels=torch.zeros(2, dtype=torch.long))
    shaped = wrapped(torch.randn(2, 3, 4, 4), labels=torch.zeros(2, dtype=torch.long),
                     masks=corner_masks(2, dtype=torch.float32)[:, None])  # [N, 1, H, W] floats are fine
    assert shaped.penalty_terms["rrr_penalty"].item() > 0


# --------------------------------------------------------------------------- the config and freezing
def test_config_round_trips_through_json_and_files(tmp_path):
    config = RRRConfig(lamb=50.0, mask_column="artifact", gradient_target="official_logprobs",
                       aggregation="official_cosine", freeze="before_layer", layer="stages.0",
                       base_model_name_or_path="simple_convnet")
    data = json.loads(config.to_json_string())
    assert data["debias_method"] == "rrr" and data["lamb"] == 50.0 and data["mask_column"] == "artifact"
    assert DebiasConfig.from_json_string(config.to_json_string()) == config
    config.save_pretrained(tmp_path)
    assert DebiasConfig.from_pretrained(tmp_path) == config


@pytest.mark.parametrize("kwargs, message", [
    ({"lamb": -1.0}, "lamb must be a finite number >= 0"),
    ({"aggregation": "l1"}, r"aggregation='l1' is not valid; choose one of: 'l2', 'official_cosine'"),
    ({"gradient_target": "logits"}, r"gradient_target='logits' is not valid; choose one of: 'log_prob_sum'"),
    ({"freeze": "all"}, r"freeze='all' is not valid; choose one of: 'conv_norm', 'none', 'before_layer'"),
    ({"mask_column": ""}, "mask_column must be a dataset column name"),
    ({"layer": "stages.0", "freeze": "conv_norm"}, r"layer='stages.0' is only used with freeze='before_layer'"),
])
def test_invalid_config_values_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RRRConfig(**kwargs)


def tiny_convnet(classes=3):
    torch.manual_seed(0)
    return timm.create_model("simple_convnet", num_classes=classes, widths=(4, 8))


@pytest.mark.parametrize("freeze, layer, trainable", [
    ("conv_norm", None, {"fc.weight", "fc.bias"}),
    ("before_layer", None, {"fc.weight", "fc.bias"}),
    ("before_layer", "stages.0", {"stages.1.0.weight", "stages.1.1.weight", "stages.1.1.bias", "fc.weight",
                                  "fc.bias"}),
    ("none", None, None),
])
def test_freeze_policies_train_what_they_say_and_the_penalty_reaches_it(freeze, layer, trainable):
    model = tiny_convnet()
    wrapped = get_debias_model(model, RRRConfig(lamb=10.0, freeze=freeze, layer=layer)).train()
    names = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert names == (trainable if trainable is not None else {name for name, _ in model.named_parameters()})
    if freeze == "conv_norm":
        assert not model.stages[0][1].training  # frozen norms stay in eval mode
    out = wrapped(torch.randn(4, 3, 16, 16), labels=torch.tensor([0, 1, 2, 0]), masks=corner_masks(4, size=16))
    out.penalty.backward()
    assert all(model.get_parameter(name).grad.abs().sum() > 0 for name in names)
    wrapped.unload()
    assert all(parameter.requires_grad for parameter in model.parameters())


# --------------------------------------------------------------------------- Trainer, CLI, saving
def masked_dataset(n=16, size=16, column="artifact_mask"):
    x, labels, masks = shortcut_data(n, size)
    return datasets.Dataset.from_dict({"pixel_values": x.numpy(), "labels": labels.numpy(),
                                       column: masks.numpy()}).with_format("torch")


def trainer_arguments(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=2, learning_rate=1e-3,
                  logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
                  debias="rrr", rrr_lamb=10.0, freeze="none")
    values.update(overrides)
    return DebiasTrainingArguments(**values)


@pytest.mark.parametrize("kind", ["timm", "vit"])
def test_trainer_steps_with_the_mask_column_and_logs_the_penalty(tmp_path, kind):
    torch.manual_seed(0)
    model = tiny_convnet(2) if kind == "timm" else ViTForImageClassification(ViTConfig(
        image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, num_labels=2))
    args = trainer_arguments(tmp_path, rrr_mask_column="region")  # remove_unused_columns stays True
    trainer = DebiasTrainer(model=model, args=args, train_dataset=masked_dataset(column="region"),
                            eval_dataset=masked_dataset(column="region"))
    assert isinstance(trainer.model, DebiasModel) and trainer.model.debias_config.mask_column == "region"
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "rrr_penalty" in entry]
    assert len(logged) == 2 and all(entry["rrr_penalty"] > 0 for entry in logged)
    assert logged[0]["penalty"] == pytest.approx(10.0 * logged[0]["rrr_penalty"], rel=1e-5)
    assert 0.0 <= trainer.evaluate()["eval_accuracy"] <= 1.0  # evaluation ignores the masks


def test_trainer_refuses_a_dataset_without_the_mask_column(tmp_path):
    with pytest.raises(ValueError, match=r"needs a mask per image.*no column 'artifact_mask'.*--rrr_mask_column"):
        DebiasTrainer(model=tiny_convnet(), args=trainer_arguments(tmp_path),
                      train_dataset=masked_dataset(column="mask"))


def test_cli_lists_rrr_and_its_options_and_refuses_them_with_another_method():
    from hf_debias.cli.train import build_parser

    text = build_parser().format_help()
    assert "rrclarc, rrr;" in text and "--rrr_lamb" in text and "--rrr_mask_column" in text
    *_, args = build_parser().parse_args_into_dataclasses(
        ["--output_dir", "out", "--debias", "rrr", "--rrr_lamb", "10", "--rrr_mask_column", "artifact_mask",
         "--freeze", "none"])
    assert args.debias_config() == RRRConfig(lamb=10.0, mask_column="artifact_mask", freeze="none")
    with pytest.raises(ValueError, match=r"--debias end does not use --rrr_lamb 10.0 \(an option of rrr\)"):
        build_parser().parse_args_into_dataclasses(["--output_dir", "out", "--debias", "end", "--rrr_lamb", "10"])


def test_saved_model_is_the_plain_network_and_loads_in_timm(tmp_path, monkeypatch):
    cache = offline_cache(monkeypatch, tmp_path)
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    wrapped = get_debias_model(model, RRRConfig(lamb=5.0, freeze="conv_norm"))
    wrapped(torch.randn(2, 3, 16, 16), labels=torch.tensor([0, 1]), masks=corner_masks(2, size=16)).loss.backward()
    wrapped.eval()
    batch = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = wrapped(batch).logits
        assert torch.equal(expected, model(batch))  # no forward change
    wrapped.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "debias_config.json").read_text())
    assert saved["debias_method"] == "rrr" and saved["lamb"] == 5.0 and saved["freeze"] == "conv_norm"
    publish(cache, tmp_path / "saved", "org/rrr-model")
    plain = timm.create_model("hf-hub:org/rrr-model", pretrained=True).eval()
    ours = load_model("org/rrr-model")
    assert isinstance(ours, DebiasModel) and ours.debias_config == RRRConfig(
        lamb=5.0, freeze="conv_norm", base_model_name_or_path=ours.debias_config.base_model_name_or_path)
    with torch.no_grad():
        assert torch.allclose(plain(batch), expected, atol=1e-6)
        assert torch.allclose(ours(batch).logits, expected, atol=1e-6)


def test_masks_follow_their_images_resize_and_crop_and_random_steps_are_refused():
    from PIL import Image

    from hf_debias.data.transforms import mask_transform_for, train_eval_transforms

    model = timm.create_model("simple_convnet", num_classes=3)  # eval: resize 20 -> 16, centre crop 16
    train, evaluation = train_eval_transforms(model)
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[-4:, -4:] = 255  # bottom-right 4x4 at 20 px
    [resized] = mask_transform_for(evaluation)([Image.fromarray(mask)])
    assert resized.shape == (16, 16) and set(resized.unique().tolist()) == {0.0, 1.0}
    rows, cols = resized.nonzero(as_tuple=True)
    assert rows.min() >= 12 and cols.min() >= 12 and resized[-1, -1] == 1  # still the bottom-right corner
    with pytest.raises(ValueError, match="random image step"):
        mask_transform_for(train)


def test_cli_train_rrr_reads_the_mask_column_of_the_built_in_artifact_data(tmp_path, caplog):
    import json
    import logging

    from hf_debias.cli import main

    with caplog.at_level(logging.WARNING, logger="hf_debias"):
        assert main(["train", "--model_name_or_path", "simple_convnet", "--dataset", "controlled-artifact",
                     "--debias", "rrr", "--rrr_lamb", "10", "--rrr_mask_column", "artifact_mask", "--freeze", "none",
                     "--max_train_samples", "64", "--max_eval_samples", "32", "--max_steps", "2",
                     "--per_device_train_batch_size", "16", "--logging_steps", "1", "--use_cpu", "true",
                     "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no",
                     "--output_dir", str(tmp_path / "out")]) == 0
    assert "training uses the evaluation transform" in caplog.text  # the augmentation gave way to the masks
    logs = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    assert any(entry.get("rrr_penalty", 0) > 0 for entry in logs)  # the masks reached the penalty
    config = json.loads((tmp_path / "out" / "debias_config.json").read_text())
    assert config["debias_method"] == "rrr" and config["mask_column"] == "artifact_mask"
