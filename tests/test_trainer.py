"""DebiasTrainer / DebiasTrainingArguments on tiny models, offline on the CPU."""

from __future__ import annotations

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


@pytest.mark.parametrize(("flags", "message"), [
    (["--debias", "fancy"], "invalid choice: 'fancy'"),
    (["--end_pairing", "half"], "invalid choice: 'half'"),
])
def test_unknown_choices_fail_at_parse_time(flags, message, capsys):
    parser = HfArgumentParser(DebiasTrainingArguments)
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses(["--output_dir", "out", "--use_cpu", "true", *flags])
    assert message in capsys.readouterr().err


def test_invalid_values_fail_when_the_arguments_are_built(tmp_path):
    with pytest.raises(ValueError, match="end_alpha|alpha must be a finite number >= 0"):
        arguments(tmp_path, end_alpha=-1.0)
    with pytest.raises(ValueError, match="debias='fancy' is not valid"):
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
