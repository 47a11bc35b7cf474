"""Sweeps through Trainer.hyperparameter_search (optuna; Ray Tune where it is installed) and ``hf-debias sweep``:
each trial's penalty uses that trial's values, the objective is a validation metric (test splits refused), bad
search spaces are clear errors, and the CLI writes the trials table and the best run."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import timm
from transformers import TrainerCallback

import image_layouts as layouts
from hf_debias.cli import main
from hf_debias.sweep import (DEFAULT_SEARCH_SPACES, SweepObjective, check_objective, check_search_space,
                             default_search_space, optuna_hp_space, run_sweep)
from hf_debias.trainer import DebiasTrainer
from test_trainer import arguments, tiny_dataset

optuna = pytest.importorskip("optuna")
FAST = ["--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--use_cpu", "true",
        "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no", "--logging_steps", "1"]


class RecordTrials(TrainerCallback):
    """Per trial: the trial's params, the config of the model built for it and every logged penalty part."""

    def __init__(self):
        self.trials = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        config = model.debias_config
        self.trials.append({"params": dict(state.trial_params), "alpha": config.alpha, "beta": config.beta,
                            "logs": [], "args_alpha": args.end_alpha})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "penalty" in logs:
            self.trials[-1]["logs"].append({key: logs[key] for key in ("penalty", "end_r_ortho", "end_r_par")})

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.trials:
            self.trials[-1]["objective"] = metrics["eval_worst_group_accuracy"]


def model_init():
    return timm.create_model("simple_convnet", num_classes=3)


def sweep_trainer(tmp_path, **overrides):
    return DebiasTrainer(model_init=model_init, args=arguments(tmp_path, max_steps=2, logging_steps=1, **overrides),
                         train_dataset=tiny_dataset(), eval_dataset=tiny_dataset(n=16, seed=1))


def test_hyperparameter_search_with_optuna_gives_each_trial_the_penalty_with_its_alpha(tmp_path):
    trainer = sweep_trainer(tmp_path)
    recorder = RecordTrials()
    trainer.add_callback(recorder)
    space = {"end_alpha": {"type": "float", "low": 0.01, "high": 100.0, "log": True},
             "end_beta": {"type": "float", "low": 0.0, "high": 1.0}}
    best = trainer.hyperparameter_search(hp_space=optuna_hp_space(space), backend="optuna", n_trials=3,
                                         compute_objective=SweepObjective(), direction="maximize",
                                         sampler=optuna.samplers.RandomSampler(seed=0))
    trials = recorder.trials
    assert len(trials) == 3 and len({trial["alpha"] for trial in trials}) == 3
    for trial in trials:
        # the model built for the trial carries the trial's alpha and beta (set on args by Trainer)
        assert (trial["alpha"], trial["beta"]) == (trial["params"]["end_alpha"], trial["params"]["end_beta"])
        assert trial["args_alpha"] == trial["alpha"] and 0.01 <= trial["alpha"] <= 100
        # and every step's penalty is alpha * r_ortho + beta * r_par with that trial's values
        assert len(trial["logs"]) == 2
        for log in trial["logs"]:
            assert log["end_r_ortho"] > 0 and log["penalty"] == pytest.approx(
                trial["alpha"] * log["end_r_ortho"] + trial["beta"] * log["end_r_par"], rel=1e-5)
    assert best.objective == max(trial["objective"] for trial in trials)
    assert best.hyperparameters in [trial["params"] for trial in trials]


def test_run_sweep_defaults_to_the_methods_space_and_validation_worst_group_and_writes_every_trial(tmp_path):
    trainer = sweep_trainer(tmp_path)
    result = run_sweep(trainer, n_trials=2)
    assert (trainer.args.end_alpha, trainer.args.end_beta) == (1.0, 1.0)  # not the last trial's
    assert result.backend == "optuna" and result.metric == "eval_worst_group_accuracy"
    assert result.direction == "maximize" and result.search_space == DEFAULT_SEARCH_SPACES["end"]
    assert [trial["trial"] for trial in result.trials] == [0, 1]
    for trial in result.trials:
        assert trial["state"] == "complete" and set(trial["params"]) == {"end_alpha", "end_beta"}
        assert 0.01 <= trial["params"]["end_alpha"] <= 50 and 0.01 <= trial["params"]["end_beta"] <= 10
        assert trial["objective"] == trial["metrics"]["eval_worst_group_accuracy"]
        assert "eval_unbiased_accuracy" in trial["metrics"] and "eval_runtime" not in trial["metrics"]
    best = max(result.trials, key=lambda trial: trial["objective"])  # optuna keeps the first of equal values
    assert result.best == {"trial": str(best["trial"]), "objective": best["objective"], "params": best["params"]}
    result.write(tmp_path / "sweep")
    written = json.loads((tmp_path / "sweep" / "trials.json").read_text())
    assert written["trials"] == result.trials and written["search_space"] == result.search_space
    rows = list(csv.DictReader((tmp_path / "sweep" / "trials.csv").open()))
    assert [float(row["end_alpha"]) for row in rows] == [trial["params"]["end_alpha"] for trial in result.trials]
    assert [float(row["objective (eval_worst_group_accuracy)"]) for row in rows] == [
        trial["objective"] for trial in result.trials]
    best_run = json.loads((tmp_path / "sweep" / "best_run.json").read_text())
    assert best_run["params"] == best["params"] and best_run["metric"] == "eval_worst_group_accuracy"
    # the seeded sampler makes the sweep reproducible
    again = run_sweep(sweep_trainer(tmp_path / "again"), n_trials=1)
    assert again.trials[0]["params"] == result.trials[0]["params"]


@pytest.mark.parametrize(("space", "message"), [
    ({"end_alhpa": {"type": "float", "low": 0.1, "high": 1}},
     r"'end_alhpa', which is not an option of --debias end\. Did you mean 'end_alpha'\? Searchable: debias_layer, "
     r"end_alpha, end_beta, end_pairing, end_normalize_forward, end_global_batch, and any TrainingArguments"),
    ({"rrclarc_lamb": {"type": "float", "low": 0.1, "high": 1}}, r"'rrclarc_lamb', which is not an option of "
                                                                 r"--debias end"),
    ({"debias": {"type": "categorical", "choices": ["end", "rrclarc"]}}, r"'debias', which a trial may not change"),
    ({"end_alpha": {"type": "float", "low": 1, "high": 1}}, r"'end_alpha': low must be below high, got low=1"),
    ({"end_alpha": {"type": "float", "low": 0, "high": 1, "log": True}}, r"a log range needs low > 0, got low=0"),
    ({"end_alpha": {"type": "float", "low": -1, "high": 1}}, r"the value -1 is not valid: alpha must be a finite "
                                                             r"number >= 0"),
    ({"end_alpha": {"type": "normal", "low": 0, "high": 1}}, r"type='normal' is not valid; choose one of: 'float'"),
    ({"end_alpha": {"type": "float", "low": 0, "high": 1, "step": 0.1}}, r"unknown key\(s\) \['step'\]"),
    ({"num_train_epochs": {"type": "int", "low": 1, "high": 2.5}}, r"high must be a finite integer, got 2\.5"),
    ({"debias_layer": {"type": "categorical", "choices": ["stages.2", None]}}, r"null cannot be searched"),
    ({"end_pairing": {"type": "categorical", "choices": ["all", "pairs"]}}, r"'pairs' is not valid: pairing="),
    ({}, r"must be a non-empty JSON object"),
])
def test_a_bad_search_space_is_a_clear_error_before_any_trial(tmp_path, space, message):
    with pytest.raises(ValueError, match=message):
        check_search_space(space, arguments(tmp_path))


def test_search_spaces_accept_trainer_fields_and_map_onto_optuna_suggestions(tmp_path):
    space = check_search_space({"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                                "num_train_epochs": {"type": "int", "low": 1, "high": 3},
                                "end_pairing": {"type": "categorical", "choices": ["all", "reference"]}},
                               arguments(tmp_path))
    assert space["num_train_epochs"] == {"type": "int", "low": 1, "high": 3, "log": False}
    fixed = optuna.trial.FixedTrial({"learning_rate": 1e-3, "num_train_epochs": 2, "end_pairing": "reference"})
    assert optuna_hp_space(space)(fixed) == {"learning_rate": 1e-3, "num_train_epochs": 2, "end_pairing": "reference"}
    assert default_search_space("rrclarc") == {"rrclarc_lamb": {"type": "float", "low": 0.1, "high": 1e5,
                                                                "log": True}}
    with pytest.raises(ValueError, match=r"--debias pclarc has no default search space \(the defaults cover end, "
                                         r"rrclarc, rrr\)"):
        default_search_space("pclarc")


def test_ray_search_space_uses_tune_domains():
    tune = pytest.importorskip("ray.tune")
    from hf_debias.sweep import ray_hp_space

    domains = ray_hp_space({"end_alpha": {"type": "float", "low": 0.1, "high": 10, "log": True},
                            "num_train_epochs": {"type": "int", "low": 1, "high": 3},
                            "end_pairing": {"type": "categorical", "choices": ["all", "reference"]}})(None)
    assert isinstance(domains["end_alpha"].get_sampler(), tune.search.sample.LogUniform)
    assert (domains["end_alpha"].lower, domains["end_alpha"].upper) == (0.1, 10)
    assert (domains["num_train_epochs"].lower, domains["num_train_epochs"].upper) == (1, 4)  # high included
    assert domains["end_pairing"].categories == ["all", "reference"]


def test_an_objective_on_a_test_split_is_refused(tmp_path):
    for kwargs in ({"split": "test_unbiased"}, {"metric": "eval_test_worst_group_accuracy"}, {"split": "Test"}):
        with pytest.raises(ValueError, match=r"is a test split: hyper-parameters must be chosen on a validation"):
            SweepObjective(**kwargs)
    evaluation = {"validation": tiny_dataset(n=8, seed=1), "test_biased": tiny_dataset(n=8, seed=2)}
    trainer = DebiasTrainer(model_init=model_init, args=arguments(tmp_path), train_dataset=tiny_dataset(),
                            eval_dataset=evaluation)
    check_objective(SweepObjective(split="validation"), trainer)
    assert SweepObjective(split="validation").key == "eval_validation_worst_group_accuracy"
    with pytest.raises(ValueError, match=r"several sets \(validation, test_biased\); pass SweepObjective\(split="):
        check_objective(SweepObjective(), trainer)
    with pytest.raises(ValueError, match=r"objective split 'val' is not an eval set; they are validation"):
        check_objective(SweepObjective(split="val"), trainer)
    # a single eval set that is a test split by its datasets name
    test_split = tiny_dataset(n=8, seed=2)
    test_split._split = "test_unbiased"
    trainer.eval_dataset = test_split
    with pytest.raises(ValueError, match=r"is the 'test_unbiased' split \(datasets\.Dataset\.split\)"):
        check_objective(SweepObjective(), trainer)
    with pytest.raises(ValueError, match=r"run_sweep needs a trainer built with model_init"):
        run_sweep(DebiasTrainer(model=model_init(), args=arguments(tmp_path), train_dataset=tiny_dataset(),
                                eval_dataset=tiny_dataset(n=8)))


def test_the_objective_must_be_a_metric_the_eval_set_produces(tmp_path):
    no_bias = tiny_dataset(n=8, seed=1).remove_columns("bias_labels")
    trainer = DebiasTrainer(model_init=model_init, args=arguments(tmp_path), train_dataset=tiny_dataset(),
                            eval_dataset=no_bias)
    with pytest.raises(ValueError, match=r"'worst_group_accuracy' is not among the metrics evaluation produces "
                                         r"here \(the eval set has no bias column 'bias_labels'\); choose one of: "
                                         r"loss, accuracy\."):
        check_objective(SweepObjective(), trainer)
    check_objective(SweepObjective("accuracy"), trainer)
    assert SweepObjective("loss").direction == "minimize" and SweepObjective("bias_gap").direction == "minimize"
    assert SweepObjective("unbiased_accuracy").direction == "maximize"
    with pytest.raises(ValueError, match=r"'eval_worst_group_accuracy' is not among the evaluation metrics; they "
                                         r"are eval_accuracy, eval_loss\."):
        SweepObjective()({"eval_loss": 1.0, "eval_accuracy": 0.5, "epoch": 1.0})
    assert SweepObjective("unbiased_accuracy")({"eval_unbiased_accuracy": 0.25}) == 0.25


def test_cli_sweep_on_built_in_colour_digits_writes_trials_and_the_best_run(tmp_path, capsys):
    out = tmp_path / "sweep"
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"end_alpha": {"type": "float", "low": 0.1, "high": 30, "log": True}}))
    assert main(["sweep", "--dataset", "colour-digits", "--colour_digits_train_size", "64", "--max_eval_samples",
                 "40", "--debias", "end", "--max_steps", "2", "--n_trials", "2", "--search_space", str(space),
                 "--output_dir", str(out), "--seed", "1", *FAST]) == 0
    printed = capsys.readouterr().out
    trials = json.loads((out / "trials.json").read_text())
    assert trials["metric"] == "eval_worst_group_accuracy" and trials["backend"] == "optuna"
    assert len(trials["trials"]) == 2
    for trial in trials["trials"]:
        assert set(trial["params"]) == {"end_alpha"} and 0.1 <= trial["params"]["end_alpha"] <= 30
        # scored on the validation split (the built-in data's default for train is test_unbiased)
        assert trial["objective"] == trial["metrics"]["eval_worst_group_accuracy"]
        assert not any(key.startswith("eval_test") for key in trial["metrics"])
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [row["trial"] for row in rows] == ["0", "1"] and all(row["state"] == "complete" for row in rows)
    best = json.loads((out / "best_run.json").read_text())
    top = max(trials["trials"], key=lambda trial: trial["objective"])
    assert best["params"] == top["params"] and math.isclose(best["objective"], top["objective"])
    assert "Sweep (optuna): 2 trials, objective eval_worst_group_accuracy (maximize)" in printed
    assert f"--end_alpha {top['params']['end_alpha']}" in printed


@pytest.mark.parametrize(("extra", "message"), [
    (["--eval_split", "test"], "--eval_split test: a sweep never evaluates on a test split"),
    (["--search_space", "missing.json"], "--search_space missing.json: no such file."),
    (["--debias", "none"], "--debias none has no default search space"),
    (["--n_trials", "0"], "--n_trials must be at least 1, got 0."),
    pytest.param(["--backend", "ray"], "ImportError: backend='ray' needs ray installed: pip install "
                 "'hf-debias[ray]'.", marks=pytest.mark.skipif(importlib.util.find_spec("ray") is not None,
                                                               reason="ray is installed")),
])
def test_cli_sweep_bad_input_is_one_error_line_and_exit_2(tmp_path, capsys, extra, message):
    data = layouts.write_metadata_table(tmp_path)
    argv = ["sweep", "--dataset", str(data), "--bias_label_column", "background", "--output_dir",
            str(tmp_path / "out"), *FAST]
    argv += extra if "--debias" in extra else ["--debias", "end", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"hf-debias: error: {message}" or (err[-1].startswith("hf-debias: error: ")
                                                         and message in err[-1])


def test_cli_sweep_search_space_error_names_the_file_and_debug_shows_the_traceback(tmp_path, capsys):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"end_alhpa": {"type": "float", "low": 0.1, "high": 1}}))
    argv = ["sweep", "--debias", "end", "--search_space", str(space), "--output_dir", str(tmp_path / "o"), *FAST]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"hf-debias: error: {space}: The search space names 'end_alhpa', which is not an option of --debias end. "
        "Did you mean 'end_alpha'? Searchable: debias_layer, end_alpha, end_beta, end_pairing, "
        "end_normalize_forward, end_global_batch, and any TrainingArguments field (learning_rate, num_train_epochs, "
        "per_device_train_batch_size, weight_decay, warmup_steps, ...).")
    with pytest.raises(ValueError, match=r"not an option of --debias end"):
        main([*argv[:1], "--debug", *argv[1:]])


def test_cli_sweep_help_lists_the_sweep_options_after_the_debias_ones(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: hf-debias sweep")
    assert text.index("debias (hf_debias):") < text.index("\nsweep:") < text.index("training (transformers")
    for option in ("--n_trials", "--backend {optuna,ray}", "--search_space FILE", "--objective", "--end_alpha"):
        assert option in text


def test_ray_tune_smoke_gives_each_trial_its_alpha(tmp_path):
    """Ray Tune in a local single-CPU instance: the trials run in worker processes, so they record the model's
    config in a file."""
    pytest.importorskip("ray.tune")
    import ray

    log = tmp_path / "built.jsonl"

    class WriteConfig(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            with open(log, "a") as stream:
                stream.write(json.dumps({"params": state.trial_params,
                                         "alpha": model.debias_config.alpha}) + "\n")

    tests = str(Path(__file__).parent)  # the workers unpickle this module's model_init and callback
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {
        "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}})
    try:
        trainer = sweep_trainer(tmp_path)
        trainer.add_callback(WriteConfig())
        space = {"end_alpha": {"type": "float", "low": 0.01, "high": 100, "log": True}}
        result = run_sweep(trainer, space, n_trials=2, backend="ray", storage_path=str(tmp_path / "ray"),
                           verbose=0)
    finally:
        ray.shutdown()
    built = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(built) == 2 and all(entry["alpha"] == entry["params"]["end_alpha"] for entry in built)
    assert sorted(trial["params"]["end_alpha"] for trial in result.trials) == sorted(e["alpha"] for e in built)
    assert all(trial["state"] == "terminated" and trial["objective"] == trial["metrics"]["eval_worst_group_accuracy"]
               for trial in result.trials)
    assert result.best["params"] in [trial["params"] for trial in result.trials]
