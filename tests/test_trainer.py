"""DebiasTrainer / DebiasTrainingArguments on tiny models, offline on the CPU."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import timm
import torch
from transformers import (HfArgumentParser, TimmWrapperConfig, TimmWrapperForImageClassification, ViTConfig,
                          ViTForImageClassification)

from hf_debias import DebiasConfig, DebiasModel, EnDConfig, get_debias_model
from hf_debias.trainer import DebiasTrainer, DebiasTrainingArguments


def tiny_dataset(n=32, size=16, num_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return datasets.Dataset.from_dict({
        "pixel_values": rng.standard_normal((n, 3, size, size)).astype(np.float32),
        "labels": rng.integers(0, num_classes, n),
        "bias_labels": rng.integers(0, 2, n),
    }).with_format("torch")


def arguments(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, per_device_eval_batch_size=16,
                  max_steps=4, learning_rate=1e-3, logging_steps=2, save_strategy="no", report_to=[],
                  use_cpu=True, seed=0, debias="end", end_alpha=1.0, end_beta=1.0, disable_tqdm=True)
    values.update(overrides)
    return DebiasTrainingArguments(**values)


def models():
    torch.manual_seed(0)
    return {
        "timm": timm.create_model("simple_convnet", num_classes=3),
        "timm_wrapper": TimmWrapperForImageClassification(TimmWrapperConfig(architecture="resnet18", num_labels=3)),
        "vit": ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=32, num_labels=3)),
    }


@pytest.mark.parametrize("kind", ["timm", "timm_wrapper", "vit"])
def test_trains_each_model_kind_and_reports_group_metrics(tmp_path, kind):
    model = models()[kind]
    trainer = DebiasTrainer(model=model, args=arguments(tmp_path), train_dataset=tiny_dataset(),
                            eval_dataset=tiny_dataset(seed=1))
    assert isinstance(trainer.model, DebiasModel)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and {"ce_loss", "penalty", "end_r_ortho", "end_r_par"} <= set(logged[0])
    metrics = trainer.evaluate()
    for key in ("eval_accuracy", "eval_worst_group_accuracy", "eval_unbiased_accuracy",
                "eval_bias_conflicting_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["eval_worst_group_accuracy"] <= metrics["eval_unbiased_accuracy"]


def test_penalty_changes_the_gradients_compared_with_debias_none(tmp_path):
    batch = {key: value[:8] for key, value in tiny_dataset()[:8].items()}
    grads = {}
    for method in ("none", "end"):
        torch.manual_seed(0)
        model = timm.create_model("simple_convnet", num_classes=3)
        # an EnD option under --debias none is an error now, so alpha is set for "end" only
        extra = {"end_alpha": 5.0} if method == "end" else {}
        trainer = DebiasTrainer(model=model, args=arguments(tmp_path, debias=method, **extra))
        trainer.model.train()
        trainer.compute_loss(trainer.model, batch).backward()
        grads[method] = model.stages[0][0].weight.grad.clone()
    assert not torch.allclose(grads["none"], grads["end"])


def test_cross_entropy_part_is_equivalent_under_gradient_accumulation(tmp_path):
    # A model without batch statistics, so that micro-batches of 4 and a batch of 8 see the same function.
    weights = {}
    for batch_size, accumulation in ((8, 1), (4, 2)):
        torch.manual_seed(0)
        model = models()["vit"]
        args = arguments(tmp_path, debias="none", per_device_train_batch_size=batch_size,
                         gradient_accumulation_steps=accumulation, max_steps=2, optim="sgd", learning_rate=0.1)
        trainer = DebiasTrainer(model=model, args=args, train_dataset=tiny_dataset(n=16))
        trainer.train()
        weights[batch_size] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    for key, value in weights[8].items():
        torch.testing.assert_close(weights[4][key], value, atol=1e-5, rtol=1e-4)


def test_checkpoint_records_the_config_and_resume_continues_the_same_run(tmp_path):
    dataset = tiny_dataset(n=64)

    def run(output_dir, max_steps, resume=None):
        torch.manual_seed(0)
        args = arguments(output_dir, max_steps=max_steps, save_strategy="steps", save_steps=2, logging_steps=1,
                         end_normalize_forward=False)
        trainer = DebiasTrainer(model=timm.create_model("simple_convnet", num_classes=3), args=args,
                                train_dataset=dataset)
        trainer.train(resume_from_checkpoint=resume)
        return {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}

    full = run(tmp_path / "full", 4)
    checkpoint = tmp_path / "full" / "checkpoint-2"
    # the checkpoint is the Hub layout; its config records the base model the run started from
    assert DebiasConfig.from_pretrained(checkpoint) == EnDConfig(alpha=1.0, beta=1.0, normalize_forward=False,
                                                                 base_model_name_or_path="simple_convnet")
    assert (checkpoint / "config.json").is_file() and not (checkpoint / "training_args.bin").exists()
    resumed = run(tmp_path / "resumed", 4, resume=str(checkpoint))
    assert resumed[3] == pytest.approx(full[3], rel=1e-5)
    assert resumed[4] == pytest.approx(full[4], rel=1e-5)


def test_arguments_become_command_line_flags_and_a_config():
    parser = HfArgumentParser(DebiasTrainingArguments)
    (args,) = parser.parse_args_into_dataclasses(
        ["--output_dir", "out", "--debias", "end", "--end_alpha", "10", "--end_beta", "0.5",
         "--end_pairing", "reference", "--debias_layer", "layer3", "--use_cpu", "true"])
    assert args.debias_config() == EnDConfig(layer="layer3", alpha=10.0, beta=0.5, pairing="reference")
    (none,) = parser.parse_args_into_dataclasses(["--output_dir", "out", "--use_cpu", "true"])
    assert none.debias_config() is None
    help_text = parser.format_help()
    assert "--end_alpha" in help_text and "disentangling" in help_text


def test_unknown_choices_fail_at_parse_time(capsys):
    parser = HfArgumentParser(DebiasTrainingArguments)
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses(["--output_dir", "out", "--use_cpu", "true", "--end_pairing", "half"])
    assert "invalid choice: 'half'" in capsys.readouterr().err
    # --debias takes a list (end,rrclarc), so argparse cannot check it: the arguments do, naming the choices
    with pytest.raises(ValueError, match=r"'fancy' is not a method; choose one of none, aclarc, end, pclarc"):
        parser.parse_args_into_dataclasses(["--output_dir", "out", "--use_cpu", "true", "--debias", "end,fancy"])


def test_invalid_values_fail_when_the_arguments_are_built(tmp_path):
    with pytest.raises(ValueError, match="end_alpha|alpha must be a finite number >= 0"):
        arguments(tmp_path, end_alpha=-1.0)
    with pytest.raises(ValueError, match="debias='fancy': 'fancy' is not a method"):
        arguments(tmp_path, debias="fancy")


def test_missing_bias_column_names_the_column_and_the_existing_ones(tmp_path):
    dataset = tiny_dataset().rename_column("bias_labels", "gender")
    model = timm.create_model("simple_convnet", num_classes=3)
    with pytest.raises(ValueError, match=r"no column 'bias_labels'; its columns are \['pixel_values', 'labels', "
                                         r"'gender'\]"):
        DebiasTrainer(model=model, args=arguments(tmp_path), train_dataset=dataset)
    trainer = DebiasTrainer(model=timm.create_model("simple_convnet", num_classes=3),
                            args=arguments(tmp_path, bias_label_column="gender", max_steps=1), train_dataset=dataset)
    trainer.train()  # the renamed column reaches the loss
    assert "end_r_ortho" in trainer.state.log_history[0] or trainer.state.global_step == 1


def test_batch_size_one_and_single_valued_bias_column_warn(tmp_path):
    single = tiny_dataset().map(lambda row: {"bias_labels": 0})
    with pytest.warns(UserWarning, match="has a single value"):
        DebiasTrainer(model=timm.create_model("simple_convnet", num_classes=3), args=arguments(tmp_path),
                      train_dataset=single)
    with pytest.warns(UserWarning, match="no pairs at batch size 1"):
        DebiasTrainer(model=timm.create_model("simple_convnet", num_classes=3),
                      args=arguments(tmp_path, per_device_train_batch_size=1), train_dataset=tiny_dataset())


def test_float_bias_labels_fail_with_a_clear_message(tmp_path):
    dataset = tiny_dataset().cast_column("bias_labels", datasets.Value("float32"))
    with pytest.raises(ValueError, match="bias_labels must hold integer .*float32"):
        DebiasTrainer(model=timm.create_model("simple_convnet", num_classes=3), args=arguments(tmp_path),
                      train_dataset=dataset.with_format("torch"))


def test_model_without_the_named_layer_fails_at_construction(tmp_path):
    with pytest.raises(ValueError, match="Layer 'layer3' not found in SimpleConvNet"):
        DebiasTrainer(model=timm.create_model("simple_convnet", num_classes=3),
                      args=arguments(tmp_path, debias_layer="layer3"), train_dataset=tiny_dataset())


@pytest.mark.parametrize("kind", ["timm", "vit"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(tmp_path, kind):
    batch = {key: value for key, value in tiny_dataset(n=8)[:8].items()}
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = models()[kind] if kind == "vit" else timm.create_model("test_vit", num_classes=3, img_size=16)
        trainer = DebiasTrainer(model=model, args=arguments(tmp_path, activation_checkpointing=checkpointing))
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        grad = next(p.grad for p in trainer.model.parameters() if p.grad is not None)
        results.append((loss.detach(), grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-6, rtol=1e-5)


def test_bf16_autocast_keeps_the_penalty_in_float32(tmp_path):
    model = get_debias_model(timm.create_model("simple_convnet", num_classes=3), EnDConfig())
    batch = {key: value for key, value in tiny_dataset(n=8)[:8].items()}
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch["pixel_values"], labels=batch["labels"], bias_labels=batch["bias_labels"])
    assert model.method.hook.activation.dtype == torch.bfloat16  # the hooked features are low precision
    assert out.penalty_terms["end_r_ortho"].dtype == torch.float32 and out.ce_loss.dtype == torch.float32
    trainer = DebiasTrainer(model=timm.create_model("simple_convnet", num_classes=3),
                            args=arguments(tmp_path, bf16=True, max_steps=2, logging_steps=1),
                            train_dataset=tiny_dataset())
    trainer.train()
    assert all(np.isfinite(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry)


RRCLARC_LAYERS = {"timm": ("stages.2", 64), "timm_wrapper": ("timm_model.layer3", 256), "vit": ("vit.layers.0", 32)}


@pytest.mark.parametrize("kind", ["timm", "timm_wrapper", "vit"])
def test_rrclarc_trains_each_model_kind_and_checkpoints_its_cav(tmp_path, kind):
    from hf_debias import CAV, compute_cav

    model = models()[kind]
    layer, channels = RRCLARC_LAYERS[kind]
    data = tiny_dataset()
    rows = data[:]
    concept = (rows["bias_labels"] == 1).long()
    cav = compute_cav(model, layer, (rows["pixel_values"], concept), concept="bias", validation_fraction=0,
                      progress=False)
    assert cav.num_channels == channels
    cav.save_pretrained(tmp_path / "cav")
    args = arguments(tmp_path / "run", debias="rrclarc", cav=str(tmp_path / "cav"), freeze="none",
                     rrclarc_lamb=10.0, save_strategy="steps", save_steps=4, debias_layer=layer)
    trainer = DebiasTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and logged[0]["rrclarc_penalty"] > 0
    checkpoint = tmp_path / "run" / "checkpoint-4"
    saved = DebiasConfig.from_pretrained(checkpoint)
    assert saved.debias_method == "rrclarc" and saved.lamb == 10.0 and saved.layer == layer
    assert torch.equal(saved.load_cav().vector, CAV.from_pretrained(tmp_path / "cav").vector)
    assert (checkpoint / "cav" / "cav.safetensors").is_file()


def test_rrclarc_flags_parse_and_bad_combinations_fail_at_parse_time(tmp_path):
    parser = HfArgumentParser(DebiasTrainingArguments)
    (args,) = parser.parse_args_into_dataclasses([
        "--output_dir", str(tmp_path), "--debias", "rrclarc", "--cav", "org/cavs/ruler", "--rrclarc_lamb", "100",
        "--rrclarc_gradient_target", "class", "--rrclarc_target_class", "2", "--freeze", "before_layer"])
    config = args.debias_config()
    assert (config.lamb, config.gradient_target, config.target_class, config.freeze, config.cav) == (
        100.0, "class", 2, "before_layer", "org/cavs/ruler")
    with pytest.raises(ValueError, match="needs a CAV"):
        DebiasTrainingArguments(output_dir=str(tmp_path), debias="rrclarc")
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--debias", "rrclarc", "--cav", "x",
                                            "--rrclarc_gradient_target", "allrand"])
    aclarc = DebiasTrainingArguments(output_dir=str(tmp_path), debias="aclarc", cav="x", freeze="none")
    assert aclarc.debias_config().freeze == "none"


@pytest.mark.parametrize("method", ["end", "rrclarc"])
def test_torch_compile_gives_the_same_losses(tmp_path, method):
    from hf_debias import compute_cav

    data = tiny_dataset()
    extra = {}
    if method == "rrclarc":
        rows = data[:]
        compute_cav(models()["timm"], "stages.2", (rows["pixel_values"], rows["bias_labels"]), validation_fraction=0,
                    progress=False).save_pretrained(tmp_path / "cav")
        extra = dict(cav=str(tmp_path / "cav"), freeze="none", rrclarc_lamb=10.0,
                     rrclarc_gradient_target="all_logits")
    losses = {}
    for compiled in (False, True):
        args = arguments(tmp_path / str(compiled), debias=method, logging_steps=1, max_steps=3,
                         torch_compile=compiled, torch_compile_backend="aot_eager" if compiled else None, **extra)
        trainer = DebiasTrainer(model=models()["timm"], args=args, train_dataset=data)
        trainer.train()
        losses[compiled] = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_trainer_saves_the_hub_layout_without_pickle_and_resumes_from_it(tmp_path):
    from hf_debias import load_model

    args = arguments(tmp_path / "run", save_strategy="steps", save_steps=2, max_steps=4)
    trainer = DebiasTrainer(model=models()["timm"], args=args, train_dataset=tiny_dataset(),
                            eval_dataset=tiny_dataset(seed=1))
    trainer.train()
    trainer.evaluate()
    trainer.save_model()
    output = tmp_path / "run"
    assert {"config.json", "model.safetensors", "debias_config.json", "README.md", "training_args.json"} <= {
        p.name for p in output.iterdir()}
    assert not list(output.glob("*.bin")) and not list(output.glob("*.pt"))
    batch = tiny_dataset(n=4, seed=2)[:]["pixel_values"]
    trained = trainer.model.eval()
    with torch.no_grad():
        expected = trained(batch).logits
        torch.testing.assert_close(load_model(output)(batch).logits, expected, rtol=0, atol=1e-6)
    card = (output / "README.md").read_text()
    assert "| eval | worst group accuracy |" in card

    # resuming from the native checkpoint restores the weights of step 2, then trains on to the same end point
    resumed = DebiasTrainer(model=models()["timm"], args=arguments(tmp_path / "run", save_strategy="steps",
                                                                   save_steps=2, max_steps=4),
                            train_dataset=tiny_dataset())
    resumed._load_from_checkpoint(str(output / "checkpoint-2"))
    step2 = load_model(output / "checkpoint-2")
    for (name, value), (_, reference) in zip(resumed.model.model.state_dict().items(),
                                             step2.model.state_dict().items()):
        assert torch.equal(value, reference), name


def test_trainer_push_to_hub_is_one_commit_with_the_card_and_baseline(tmp_path, monkeypatch):
    import json

    from huggingface_hub import ModelCard

    from hub_cache import FakeHub, offline_cache

    hub = FakeHub(offline_cache(monkeypatch, tmp_path))
    baseline = tmp_path / "vanilla"
    baseline.mkdir()
    (baseline / "eval_results.json").write_text(json.dumps({"eval_accuracy": 0.5, "eval_worst_group_accuracy": 0.1,
                                                             "eval_loss": 1.0, "epoch": 1.0}))
    args = arguments(tmp_path / "run", hub_model_id="org/end-run", bias_description="background colour",
                     baseline_results=str(baseline), hub_token="hf_SECRETTOKEN123")
    trainer = DebiasTrainer(model=models()["timm"], args=args, train_dataset=tiny_dataset(),
                            eval_dataset=tiny_dataset(seed=1))
    trainer.train()
    trainer.evaluate()
    with hub.patch():
        trainer.push_to_hub()
    assert len(hub.commits) == 1 and hub.tokens == ["hf_SECRETTOKEN123"]
    assert hub.commits[0]["files"] == ["README.md", "config.json", "debias_config.json", "model.safetensors"]
    card = ModelCard(hub.contents["org/end-run"]["README.md"].decode())
    before = {r.metric_type: r.metric_value for r in card.data.eval_results if r.metric_config}
    after = {r.metric_type: r.metric_value for r in card.data.eval_results if not r.metric_config}
    assert before == {"accuracy": 0.5, "worst_group_accuracy": 0.1}
    assert after["accuracy"] == trainer.state.log_history[-1]["eval_accuracy"]
    assert "background colour" in card.text


def test_a_missing_baseline_results_file_fails_at_parse_time(tmp_path):
    with pytest.raises(ValueError, match="baseline_results 'no/such/run' is neither a JSON file nor a run folder"):
        arguments(tmp_path, baseline_results="no/such/run")


def test_logged_loss_parts_are_step_means_and_a_non_finite_part_raises(tmp_path):
    trainer = DebiasTrainer(model=models()["timm"], args=arguments(tmp_path), train_dataset=tiny_dataset())
    trainer._add_loss_parts(penalty=torch.tensor(1.0), end_r_par=torch.tensor(0.25))
    trainer._add_loss_parts(penalty=torch.tensor(3.0), end_r_par=torch.tensor(0.75))
    trainer.log({"loss": 0.5})
    assert trainer.state.log_history[-1]["penalty"] == 2.0 and trainer.state.log_history[-1]["end_r_par"] == 0.5
    # On a GPU the penalty does not wait for the device to check its features; the log catches a NaN.
    trainer._add_loss_parts(penalty=torch.tensor(float("nan")))
    with pytest.raises(ValueError, match="'penalty' became nan"):
        trainer.log({"loss": 0.5})


# ---------------------------------------------------------------------------------------- the Trainer's own options
def vit_model():
    return models()["vit"]


def batch_of(dataset, n=8):
    return {key: value for key, value in dataset[:n].items()}


def test_label_smoothing_is_plain_trainers_loss_under_none_and_adds_the_penalty_under_end(tmp_path):
    import copy

    from transformers import Trainer, TrainingArguments
    from transformers.trainer_pt_utils import LabelSmoother

    batch = batch_of(tiny_dataset())
    vit = vit_model().train()
    plain = Trainer(model=vit, args=TrainingArguments(output_dir=str(tmp_path / "plain"), use_cpu=True, report_to=[],
                                                      label_smoothing_factor=0.5))
    plain_loss = plain.compute_loss(vit, {"pixel_values": batch["pixel_values"], "labels": batch["labels"]})
    losses = {}
    for factor in (0.0, 0.5):
        ours = DebiasTrainer(model=copy.deepcopy(vit), args=arguments(tmp_path / "none", debias="none",
                                                                      label_smoothing_factor=factor))
        ours.model.train()
        losses[factor] = ours.compute_loss(ours.model, batch)
    assert losses[0.5].item() == pytest.approx(plain_loss.item(), rel=1e-6)
    assert abs(losses[0.5].item() - losses[0.0].item()) > 1e-3  # the factor is not ignored

    # EnD on a plain timm model (Trainer itself crashes there: timm models have no .config)
    trainer = DebiasTrainer(model=timm.create_model("simple_convnet", num_classes=3),
                            args=arguments(tmp_path / "end", label_smoothing_factor=0.5, end_alpha=5.0),
                            train_dataset=tiny_dataset())
    trainer.model.train()
    loss, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    penalty = trainer._loss_part_sums["penalty"]
    smoothed = LabelSmoother(epsilon=0.5)({"logits": outputs["logits"]}, batch["labels"])
    assert penalty.item() > 1e-4
    assert loss.item() == pytest.approx((smoothed + penalty).item(), rel=1e-6)
    trainer.train()  # and a few steps run
    assert trainer.state.global_step == 4


def sum_cross_entropy(outputs, labels, num_items_in_batch=None):
    """A compute_loss_func normalised by the whole accumulated batch, as Trainer's convention wants."""
    total = torch.nn.functional.cross_entropy(outputs.logits.float(), labels, reduction="sum")
    return total / num_items_in_batch if num_items_in_batch is not None else total / len(labels)


def test_compute_loss_func_replaces_the_cross_entropy_and_the_penalty_is_added_scaled_for_accumulation(tmp_path):
    batch = batch_of(tiny_dataset())
    calls = []

    def doubled(outputs, labels, num_items_in_batch=None):
        calls.append((outputs.logits.shape, labels.dtype, num_items_in_batch))
        return 2.0 * torch.nn.functional.cross_entropy(outputs.logits.float(), labels)

    trainer = DebiasTrainer(model=timm.create_model("simple_convnet", num_classes=3),
                            args=arguments(tmp_path, end_alpha=5.0), compute_loss_func=sum_cross_entropy)
    assert trainer.loss_is_scaled_for_ga is True  # Trainer's rule for compute_loss_func
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 2
    loss, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True, num_items_in_batch=16)
    penalty = trainer._loss_part_sums["penalty"]
    custom = torch.nn.functional.cross_entropy(outputs["logits"].float(), batch["labels"], reduction="sum") / 16
    assert penalty.item() > 1e-4
    # the custom loss is already normalised over the accumulated batch; the per-batch penalty is divided here
    assert loss.item() == pytest.approx((custom + penalty / 2).item(), rel=1e-6)

    trainer = DebiasTrainer(model=timm.create_model("simple_convnet", num_classes=3),
                            args=arguments(tmp_path, debias="none"), compute_loss_func=doubled)
    trainer.model.train()
    loss, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    assert calls == [(torch.Size([8, 3]), torch.int64, None)]
    ce = torch.nn.functional.cross_entropy(outputs["logits"].float(), batch["labels"])
    assert loss.item() == pytest.approx(2 * ce.item(), rel=1e-6)


def test_label_smoothing_beside_compute_loss_func_warns_that_it_is_not_used(tmp_path):
    with pytest.warns(UserWarning, match=r"label_smoothing_factor=0\.1 is not used: compute_loss_func replaces"):
        DebiasTrainer(model=timm.create_model("simple_convnet", num_classes=3),
                      args=arguments(tmp_path, debias="none", label_smoothing_factor=0.1),
                      compute_loss_func=sum_cross_entropy)


def test_compute_loss_func_is_equivalent_under_gradient_accumulation(tmp_path):
    weights = {}
    for batch_size, accumulation in ((8, 1), (4, 2)):
        torch.manual_seed(0)
        args = arguments(tmp_path, debias="none", per_device_train_batch_size=batch_size,
                         gradient_accumulation_steps=accumulation, max_steps=2, optim="sgd", learning_rate=0.1)
        trainer = DebiasTrainer(model=vit_model(), args=args, train_dataset=tiny_dataset(n=16),
                                compute_loss_func=sum_cross_entropy)
        trainer.train()
        weights[batch_size] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    for key, value in weights[8].items():
        torch.testing.assert_close(weights[4][key], value, atol=1e-5, rtol=1e-4)


def test_model_init_gives_every_trial_the_penalty_with_that_trials_alpha(tmp_path, monkeypatch, caplog):
    """What hyperparameter_search does with optuna (not installed here): train(trial=...) per trial, with
    Trainer's hp_space reading the trial's parameters."""
    import logging
    from types import SimpleNamespace

    import transformers.integrations
    from transformers.trainer_utils import HPSearchBackend

    monkeypatch.setattr(transformers.integrations, "hp_params", lambda trial: trial.params)
    built = []

    def model_init():
        torch.manual_seed(0)
        built.append(timm.create_model("simple_convnet", num_classes=3))
        return built[-1]

    trainer = DebiasTrainer(model_init=model_init, args=arguments(tmp_path, max_steps=2, logging_steps=1),
                            train_dataset=tiny_dataset())
    assert isinstance(trainer.model, DebiasModel) and trainer.model.debias_config.alpha == 1.0
    trainer.hp_search_backend = HPSearchBackend.OPTUNA
    trainer.hp_space = lambda trial: trial.params
    penalties = {}
    with caplog.at_level(logging.INFO, logger="hf_debias.trainer"):
        for number, alpha in enumerate((0.0, 50.0)):
            caplog.clear()
            trainer.train(trial=SimpleNamespace(number=number, params={"end_alpha": alpha, "end_beta": 0.0}))
            assert isinstance(trainer.model, DebiasModel) and trainer.model.model is built[-1]
            assert (trainer.model.debias_config.alpha, trainer.model.debias_config.beta) == (alpha, 0.0)
            penalties[alpha] = [entry["penalty"] for entry in trainer.state.log_history if "penalty" in entry]
            attached = [r.getMessage() for r in caplog.records if "attached correction" in r.getMessage()]
            assert len(attached) == 1 and "end" in attached[0] and f'"alpha": {alpha}' in attached[0]
    assert len(penalties[0.0]) == 2 and penalties[0.0] == [0.0, 0.0]
    assert all(value > 0 for value in penalties[50.0])
    # a trial that sets an option of another method is refused, not ignored
    with pytest.raises(ValueError, match=r"--debias end does not use --rrclarc_lamb 5\.0"):
        trainer.train(trial=SimpleNamespace(number=2, params={"rrclarc_lamb": 5.0}))


def test_vanilla_baseline_trains_a_plain_timm_model_with_default_arguments(tmp_path):
    data = tiny_dataset(n=16).add_column("note", ["not a tensor"] * 16)  # a column the model must not receive
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=3)
    before = model.fc.weight.detach().clone()
    args = DebiasTrainingArguments(output_dir=str(tmp_path), debias="none", max_steps=2,
                                   per_device_train_batch_size=8, report_to=[], use_cpu=True, disable_tqdm=True)
    assert args.remove_unused_columns  # the default
    trainer = DebiasTrainer(model=model, args=args, train_dataset=data, eval_dataset=tiny_dataset(n=8, seed=1))
    trainer.train()
    assert trainer.state.global_step == 2 and not torch.equal(model.fc.weight, before)
    metrics = trainer.evaluate()
    assert np.isfinite(metrics["eval_loss"]) and 0.0 <= metrics["eval_worst_group_accuracy"] <= 1.0


@pytest.mark.parametrize("kwargs", [{"debias": "end", "cav": "x"}, {"debias": "none", "end_alpha": 50.0},
                                    {"debias": "none", "debias_layer": "stages.2"},
                                    {"debias": "rrclarc", "cav": "x", "end_beta": 2.0},
                                    {"debias": "pclarc", "cav": "x", "rrclarc_lamb": 3.0}])
def test_options_of_a_method_that_is_not_selected_are_an_error(tmp_path, kwargs):
    (option, value), = [(key, value) for key, value in kwargs.items() if key not in ("debias", "cav")] or [
        ("cav", "x")]
    with pytest.raises(ValueError, match=rf"--debias {kwargs['debias']} does not use --{option} {value!r}"):
        DebiasTrainingArguments(output_dir=str(tmp_path), use_cpu=True, **kwargs)


def test_options_of_another_method_are_an_error_on_the_command_line_too(capsys):
    parser = HfArgumentParser(DebiasTrainingArguments)
    with pytest.raises(ValueError, match=r"--debias end does not use --cav 'org/cav' \(an option of aclarc, "
                                         r"pclarc, rrclarc\); --rrclarc_lamb 2\.0 \(an option of rrclarc\)"):
        parser.parse_args_into_dataclasses(["--output_dir", "out", "--use_cpu", "true", "--debias", "end",
                                            "--cav", "org/cav", "--rrclarc_lamb", "2"])
    (args,) = parser.parse_args_into_dataclasses(["--output_dir", "out", "--use_cpu", "true", "--debias", "rrclarc",
                                                  "--cav", "org/cav", "--freeze", "none"])
    assert args.debias_config().freeze == "none"


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "is not readable JSON"),
    ("[0.5]", "must be a non-empty JSON object of metrics"),
    ("{}", "must be a non-empty JSON object"),
    ('{"eval_accuracy": "high"}', "field 'eval_accuracy' must be a number, got \"high\""),
    ('{"eval": {"accuracy": null}}', "field 'eval.accuracy' must be a number, got null"),
    ('{"eval": {"accuracy": 0.5}, "eval_loss": 1.0}', "mixes splits"),
])
def test_baseline_results_are_fully_checked_before_training(tmp_path, content, message):
    file = tmp_path / "baseline.json"
    file.write_text(content)
    with pytest.raises(ValueError, match=rf"baseline_results '{file}'.*{message}"):
        arguments(tmp_path, baseline_results=str(file))


def test_model_card_texts_are_checked_before_training(tmp_path):
    with pytest.raises(ValueError, match="--bias_description must be one non-empty line"):
        arguments(tmp_path, bias_description="colour\n# injected heading")
    with pytest.raises(ValueError, match="--card_dataset must be one non-empty line"):
        arguments(tmp_path, card_dataset="  ")


# ---------------------------------------------------------------------------------------------- resuming
def _run_with_checkpoint(output_dir, **overrides):
    args = arguments(output_dir, max_steps=2, save_strategy="steps", save_steps=2, **overrides)
    trainer = DebiasTrainer(model=timm.create_model("simple_convnet", num_classes=3), args=args,
                            train_dataset=tiny_dataset())
    trainer.train()
    return output_dir / "checkpoint-2"


def test_resume_with_other_debias_options_is_an_error_naming_the_fields(tmp_path, caplog):
    import logging

    checkpoint = _run_with_checkpoint(tmp_path / "first")

    def resume(**overrides):
        args = arguments(tmp_path / "second", max_steps=3, save_strategy="no", **overrides)
        trainer = DebiasTrainer(model=timm.create_model("simple_convnet", num_classes=3), args=args,
                                train_dataset=tiny_dataset())
        trainer.train(resume_from_checkpoint=str(checkpoint))
        return trainer

    with pytest.raises(ValueError, match=r"differs from this run's debias options: alpha: checkpoint 1\.0, this "
                                         r"run 50\.0\. .*--allow_debias_config_change"):
        resume(end_alpha=50.0)
    with pytest.raises(ValueError, match=r"beta: checkpoint 1\.0, this run 2\.0; pairing: checkpoint 'all', "
                                         r"this run 'reference'"):
        resume(end_beta=2.0, end_pairing="reference")
    with pytest.raises(ValueError, match=r"method: checkpoint end, this run none"):
        resume(debias="none")
    with caplog.at_level(logging.WARNING, logger="hf_debias.trainer"):
        trainer = resume(end_alpha=50.0, allow_debias_config_change=True)
    assert trainer.state.global_step == 3 and trainer.model.debias_config.alpha == 50.0
    assert any("alpha: checkpoint 1.0, this run 50.0" in r.getMessage() and "allowed" in r.getMessage()
               for r in caplog.records)
    resume()  # the same options resume, as before

    # a checkpoint without its debias_config.json, resumed by a run with a correction
    (checkpoint / "debias_config.json").unlink()
    with pytest.raises(ValueError, match=r"method: checkpoint none \(no debias_config\.json\), this run end"):
        resume()


def test_resume_compares_the_cav_by_content_and_ignores_record_only_fields(tmp_path):
    from hf_debias import CAV, RRClArCConfig
    from hf_debias.trainer import debias_config_differences

    cav = CAV(vector=torch.tensor([1.0, 2.0, 3.0]), layer="stages.2", concept="bias")
    cav.save_pretrained(tmp_path / "a")
    cav.save_pretrained(tmp_path / "b")
    saved = RRClArCConfig(cav=str(tmp_path / "a"), lamb=10.0, base_model_name_or_path="/somewhere/model",
                          hf_debias_version="0.0.1")
    same = RRClArCConfig(cav=str(tmp_path / "b"), lamb=10.0)
    assert debias_config_differences(saved, same) == []
    CAV(vector=torch.tensor([1.0, 2.0, 4.0]), layer="stages.2", concept="bias").save_pretrained(tmp_path / "c")
    other = RRClArCConfig(cav=str(tmp_path / "c"), lamb=100.0)
    differences = debias_config_differences(RRClArCConfig(cav=str(tmp_path / "a"), lamb=10.0), other)
    assert differences[0] == "lamb: checkpoint 10.0, this run 100.0"
    assert differences[1].startswith("cav: the checkpoint's CAV and this run's")
    assert "differ in vector" in differences[1]


# ---------------------------------------------------------------------------------------------- labels
def test_labels_of_any_integer_dtype_become_int64_before_the_loss(tmp_path):
    dtype = {"current": torch.int32}

    def collate(rows):  # a collator of one's own keeps the dtype (datasets' torch format gives int64)
        batch = torch.utils.data.default_collate(rows)
        return {**batch, "labels": batch["labels"].to(dtype["current"]),
                "bias_labels": batch["bias_labels"].to(dtype["current"])}

    data = tiny_dataset().cast_column("labels", datasets.Value("int32")).cast_column(
        "bias_labels", datasets.Value("uint8")).with_format("torch")
    torch.manual_seed(0)
    trainer = DebiasTrainer(model=timm.create_model("simple_convnet", num_classes=3),
                            args=arguments(tmp_path, max_steps=1), train_dataset=data, data_collator=collate)
    rows = [data[i] for i in range(8)]
    trainer.model.train()
    reference = trainer.compute_loss(trainer.model, {**collate(rows), **{
        key: value.long() for key, value in collate(rows).items() if key != "pixel_values"}}).item()
    for current in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        dtype["current"] = current
        raw = collate(rows)
        assert raw["labels"].dtype == current and raw["bias_labels"].dtype == current
        inputs = trainer._prepare_inputs(raw)
        assert inputs["labels"].dtype == torch.int64 and inputs["bias_labels"].dtype == torch.int64
        assert trainer.compute_loss(trainer.model, raw).item() == pytest.approx(reference, rel=1e-6)
        out = trainer.model(raw["pixel_values"], labels=raw["labels"], bias_labels=raw["bias_labels"])
        assert out.loss.item() == pytest.approx(reference, rel=1e-6)
    dtype["current"] = torch.int32
    trainer.train()  # int32 labels once failed inside F.cross_entropy
    assert trainer.state.global_step == 1 and np.isfinite(trainer.state.log_history[-1]["train_loss"])


class TestNoSilentResults:
    """Cases that once gave a wrong or missing result without an error (referenced by the adversarial suite)."""

    def test_float_or_bool_label_columns_are_an_error_naming_the_column(self, tmp_path):
        floats = tiny_dataset().cast_column("labels", datasets.Value("float32"))
        with pytest.raises(ValueError, match=r"training dataset's column 'labels' has dtype float32"):
            DebiasTrainer(model=timm.create_model("simple_convnet", num_classes=3), args=arguments(tmp_path),
                          train_dataset=floats)
        bools = tiny_dataset().rename_column("bias_labels", "gender").cast_column("gender", datasets.Value("bool"))
        with pytest.raises(ValueError, match=r"evaluation dataset's column 'gender' has dtype bool"):
            DebiasTrainer(model=timm.create_model("simple_convnet", num_classes=3),
                          args=arguments(tmp_path, debias="none", bias_label_column="gender"), eval_dataset=bools)
        trainer = DebiasTrainer(model=timm.create_model("simple_convnet", num_classes=3), args=arguments(tmp_path))
        batch = batch_of(tiny_dataset())
        with pytest.raises(ValueError, match=r"The column 'bias_labels' must hold integer class ids, got dtype "
                                             r"torch\.float32"):
            trainer._prepare_inputs({**batch, "bias_labels": batch["bias_labels"].float()})
        with pytest.raises(ValueError, match=r"The column 'labels' must hold integer class ids, got dtype torch\.bool"):
            trainer.compute_loss(trainer.model, {**batch, "labels": batch["labels"] > 0})

    def test_an_empty_batch_is_a_clear_error(self, tmp_path):
        trainer = DebiasTrainer(model=timm.create_model("simple_convnet", num_classes=3), args=arguments(tmp_path))
        empty = {key: value[:0] for key, value in batch_of(tiny_dataset()).items()}
        trainer.model.train()
        for call in (lambda: trainer._prepare_inputs(dict(empty)), lambda: trainer.compute_loss(trainer.model, empty),
                     lambda: trainer.model(empty["pixel_values"], labels=empty["labels"],
                                           bias_labels=empty["bias_labels"])):
            with pytest.raises(ValueError, match="The batch is empty: pixel_values has 0 samples"):
                call()

    def test_evaluation_without_the_bias_column_reports_accuracy_and_loss(self, tmp_path):
        without = tiny_dataset(seed=1).remove_columns("bias_labels")
        trainer = DebiasTrainer(model=timm.create_model("simple_convnet", num_classes=3),
                                args=arguments(tmp_path, max_steps=1), train_dataset=tiny_dataset(),
                                eval_dataset={"with": tiny_dataset(seed=1), "without": without})
        trainer.train()
        metrics = trainer.evaluate()
        assert np.isfinite(metrics["eval_without_loss"]) and 0.0 <= metrics["eval_without_accuracy"] <= 1.0
        assert "eval_without_worst_group_accuracy" not in metrics
        assert metrics["eval_with_accuracy"] == pytest.approx(metrics["eval_without_accuracy"])  # same images
        assert metrics["eval_with_loss"] == pytest.approx(metrics["eval_without_loss"], rel=1e-5)
        assert 0.0 <= metrics["eval_with_worst_group_accuracy"] <= 1.0
        single = trainer.evaluate(eval_dataset=without)
        assert {"eval_loss", "eval_accuracy"} <= set(single)

    def test_group_metrics_name_every_group_its_size_and_the_worst_one(self, tmp_path):
        import json

        from hf_debias.metrics.group import groups_from_metrics

        evaluation = tiny_dataset(seed=1)
        trainer = DebiasTrainer(model=timm.create_model("simple_convnet", num_classes=3),
                                args=arguments(tmp_path, max_steps=1), train_dataset=tiny_dataset(),
                                eval_dataset=evaluation)
        trainer.train()
        metrics = trainer.evaluate()
        trainer.save_metrics("eval", metrics)
        rows = groups_from_metrics(json.loads((tmp_path / "eval_results.json").read_text()), prefix="eval_")
        pairs = list(zip(evaluation[:]["labels"].tolist(), evaluation[:]["bias_labels"].tolist()))
        assert {(row["label"], row["bias"]): row["count"] for row in rows} == {
            pair: pairs.count(pair) for pair in set(pairs)}
        assert all(isinstance(row["aligned"], bool) for row in rows)  # aligned groups come from the training set
        worst = min(rows, key=lambda row: row["accuracy"])
        assert metrics["eval_worst_group_accuracy"] == worst["accuracy"]
        worst_group = tuple(metrics[f"eval_worst_group_{key}"] for key in ("label", "bias", "count"))
        assert worst_group == (worst["label"], worst["bias"], worst["count"])
        card_metrics = trainer.model_card_info().metrics["eval"]
        assert "group_0_0_accuracy" in card_metrics or "group_0_1_accuracy" in card_metrics
        # each group's size and flag come along for the card's per-group table; the worst group's ids do not
        assert not any(key.startswith("worst_group_") and key.endswith(("_label", "_bias", "_count"))
                       for key in card_metrics)
        assert {key: value for key, value in card_metrics.items() if key.endswith("_count")} == {
            f"group_{label}_{bias}_count": count for (label, bias), count in
            {(row["label"], row["bias"]): row["count"] for row in rows}.items()}
        assert all(isinstance(value, bool) for key, value in card_metrics.items() if key.endswith("_aligned"))

    def test_a_small_penalty_is_logged_at_full_precision(self, tmp_path):
        trainer = DebiasTrainer(model=models()["timm"], args=arguments(tmp_path), train_dataset=tiny_dataset())
        trainer._add_loss_parts(penalty=torch.tensor(3.25e-9, dtype=torch.float64))
        trainer.log({"loss": 0.5})
        assert trainer.state.log_history[-1]["penalty"] == pytest.approx(3.25e-9, rel=1e-6)

    def test_the_default_search_objective_is_validation_worst_group_accuracy_maximised(self, tmp_path, monkeypatch):
        """Trainer's own default (the sum of the metrics, minimised) would minimise accuracy."""
        from transformers import Trainer

        seen = {}
        monkeypatch.setattr(Trainer, "hyperparameter_search", lambda self, hp_space, objective, n_trials, direction,
                            *args, **kwargs: seen.update(objective=objective, direction=direction))
        trainer = DebiasTrainer(model=models()["timm"], args=arguments(tmp_path), train_dataset=tiny_dataset(),
                                eval_dataset=tiny_dataset())
        trainer.hyperparameter_search(n_trials=2)
        assert seen["direction"] == "maximize"
        assert seen["objective"]({"eval_worst_group_accuracy": 0.25, "eval_accuracy": 0.9}) == 0.25
        trainer.hyperparameter_search(compute_objective=lambda metrics: 1.0)
        assert seen["direction"] == "minimize"  # a user objective keeps Trainer's default direction
        with pytest.raises(ValueError, match="test split"):
            from hf_debias.sweep import SweepObjective
            SweepObjective(split="test")


class TestSecrets:
    """The Hub token never appears in the arguments' repr / str, saved JSON, logs or error messages."""

    TOKEN = "hf_SECRETtoken0123456789abcdef"

    def test_repr_and_str_of_the_arguments_redact_the_token(self, tmp_path):
        args = arguments(tmp_path, hub_token=self.TOKEN)
        for text in (repr(args), str(args), args.to_json_string(), json.dumps(args.to_dict())):
            assert self.TOKEN not in text
        assert "<HUB_TOKEN>" in repr(args) and "end_alpha=1.0" in repr(args)  # our own fields are shown too

    def test_training_logs_checkpoints_and_errors_never_contain_the_token(self, tmp_path, caplog, capsys):
        import logging

        args = arguments(tmp_path / "run", hub_token=self.TOKEN, max_steps=2, save_strategy="steps", save_steps=2,
                         logging_steps=1)
        with caplog.at_level(logging.DEBUG):
            logging.getLogger("hf_debias").debug("arguments: %s", args)
            trainer = DebiasTrainer(model=models()["timm"], args=args, train_dataset=tiny_dataset())
            trainer.train()
            with pytest.raises(ValueError) as resume_error:
                DebiasTrainer(model=models()["timm"],
                              args=arguments(tmp_path / "run", hub_token=self.TOKEN, end_alpha=3.0, max_steps=3),
                              train_dataset=tiny_dataset()).train(
                    resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
            with pytest.raises(ValueError) as options_error:
                arguments(tmp_path, hub_token=self.TOKEN, cav="x")
        captured = capsys.readouterr()
        assert self.TOKEN not in caplog.text + captured.out + captured.err
        assert self.TOKEN not in str(resume_error.value) + str(options_error.value)
        files = [path for path in (tmp_path / "run").rglob("*") if path.is_file()]
        assert any(path.name == "training_args.json" for path in files)
        for path in files:
            assert self.TOKEN.encode() not in path.read_bytes(), path


def test_metric_for_best_model_that_evaluation_never_produces_is_an_error_before_training(tmp_path):
    """A typo (or a bare metric name with several eval sets) used to fail with a KeyError at the first evaluation,
    after training up to it."""
    data = tiny_dataset()
    model = timm.create_model("simple_convnet", num_classes=3)
    common = dict(eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2, load_best_model_at_end=True)
    with pytest.raises(ValueError, match="'worst_grup_accuracy'.*worst_group_accuracy"):
        DebiasTrainer(model=model, args=arguments(tmp_path, metric_for_best_model="worst_grup_accuracy", **common),
                      train_dataset=data, eval_dataset=data)
    with pytest.raises(ValueError, match="validation_worst_group_accuracy"):
        DebiasTrainer(model=model, args=arguments(tmp_path, metric_for_best_model="worst_group_accuracy", **common),
                      train_dataset=data, eval_dataset={"validation": data, "test": data})
    without_bias = data.remove_columns("bias_labels")
    with pytest.raises(ValueError, match="worst_group_accuracy.*choose one of: loss, accuracy"):
        DebiasTrainer(model=model, args=arguments(tmp_path, debias="none", metric_for_best_model="worst_group_accuracy",
                                                  **common), train_dataset=without_bias, eval_dataset=without_bias)
    for name in ("worst_group_accuracy", "eval_bias_conflicting_accuracy", "group_1_0_accuracy", "loss"):
        DebiasTrainer(model=model, args=arguments(tmp_path, metric_for_best_model=name, **common),
                      train_dataset=data, eval_dataset=data)
    DebiasTrainer(model=model, args=arguments(tmp_path, metric_for_best_model="test_worst_group_accuracy", **common),
                  train_dataset=data, eval_dataset={"validation": data, "test": data})
