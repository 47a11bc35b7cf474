"""Choosing the RR-ClArC recipe (which CAV — pooled at the last stage or spatial at an early one —, the freeze policy,
λ) on a validation split that contains the artifact, through ``hf-debias sweep`` / ``hyperparameter_search``:
each trial corrects with its own CAV, and no test split is ever read."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import timm
import torch

from hf_debias import compute_cav
from hf_debias.cli import main
from hf_debias.data import controlled_artifact_arrays, insert_artifact
from hf_debias.data.artifacts import BUILTIN_DIGITS
from hf_debias.fit_loop import images_to_tensor
from hf_debias.sweep import SweepObjective, run_sweep
from hf_debias.trainer import DebiasTrainer
from test_trainer import arguments

pytest.importorskip("optuna")
FAST = ["--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "64", "--use_cpu", "true",
        "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no", "--logging_steps", "1"]


def two_cavs(tmp_path, model, images: torch.Tensor, artifact: torch.Tensor) -> dict[str, str]:
    """The paper's recipe (mean-pooled at the last stage) and the spatial one (pooling='none' at stages.1), saved."""
    folders = {}
    for name, layer, pooling in (("pooled", "stages.3", "mean"), ("spatial", "stages.1", "none")):
        cav = compute_cav(model, layer, (images, artifact), concept="patch", pooling=pooling, progress=False)
        folders[name] = str(cav.save_pretrained(tmp_path / f"cav_{name}"))
    return folders


def arrays_as_dataset(images: np.ndarray, labels: np.ndarray, artifact: np.ndarray) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"pixel_values": images_to_tensor(images).numpy(), "labels": labels,
                                       "bias_labels": artifact}).with_format("torch")


def test_a_sweep_gives_each_trial_its_own_cav_and_scores_it_on_an_attacked_validation_split(tmp_path):
    arrays = controlled_artifact_arrays(None, target_class=0, n_train=240, n_validation=120, n_test=10, seed=0,
                                        **BUILTIN_DIGITS)
    train = arrays["train"]
    # validation that contains the artifact: in half of every class's images, so worst-group accuracy (class x
    # artifact) sees the shortcut
    clean = arrays["validation"]
    with_artifact = np.arange(len(clean.labels)) % 2 == 1
    images = clean.images.copy()
    images[with_artifact] = insert_artifact(images[with_artifact], "patch")[0]
    validation = arrays_as_dataset(images, clean.labels, with_artifact.astype(np.int64))
    torch.manual_seed(0)
    model = timm.create_model("simple_convnet", num_classes=10)
    target = train.labels == 0
    folders = two_cavs(tmp_path, model, images_to_tensor(train.images[target]), torch.from_numpy(train.artifact[target]))
    built = []

    def model_init():
        torch.manual_seed(0)
        return timm.create_model("simple_convnet", num_classes=10)

    class Record(DebiasTrainer):
        def _attach_correction(self, model, config, announce=False):
            corrected = super()._attach_correction(model, config, announce=announce)
            if config is not None:
                built.append((corrected.method.cav.name_or_path, corrected.method.cav.pooling, corrected.method.layer.spec,
                              config.freeze))
            return corrected

    args = arguments(tmp_path / "out", debias="rrclarc", rrclarc_lamb=10.0, cav=folders["pooled"], max_steps=2,
                     num_train_epochs=1, end_alpha=1.0)
    trainer = Record(model_init=model_init, args=args, train_dataset=arrays_as_dataset(
        train.images, train.labels, train.artifact), eval_dataset=validation)
    space = {"cav": {"type": "categorical", "choices": [folders["pooled"], folders["spatial"]]},
             "freeze": {"type": "categorical", "choices": ["conv_norm", "before_layer"]}}
    result = run_sweep(trainer, space, n_trials=3, objective=SweepObjective("worst_group_accuracy"))
    trials = [trial for trial in result.trials if trial["state"] == "complete"]
    assert len(trials) == 3
    per_trial = built[-3:]  # one correction built per trial (model_init), after the trainer's own first one
    for trial, (cav, pooling, layer, freeze) in zip(trials, per_trial):
        assert cav == trial["params"]["cav"] and freeze == trial["params"]["freeze"]
        assert (pooling, layer) == (("none", "stages.1") if cav == folders["spatial"] else ("mean", "stages.3"))
        assert trial["objective"] == trial["metrics"]["eval_worst_group_accuracy"]
        # the groups are class x artifact of the validation split: the artifact is seen in every class
        assert "eval_group_5_1_accuracy" in trial["metrics"]
    assert result.best["objective"] == max(trial["objective"] for trial in trials)


def test_cli_sweep_over_cav_recipes_reads_train_and_validation_only(tmp_path, capsys, monkeypatch):
    """Every dataset access is recorded by split: the test splits (test_clean, test_attacked) are never read."""
    read_splits = set()
    for name in ("__getitem__", "__getitems__"):
        original = getattr(datasets.Dataset, name)

        def spy(self, key, _original=original):
            read_splits.add(str(self.split))
            return _original(self, key)

        monkeypatch.setattr(datasets.Dataset, name, spy)
    arrays = controlled_artifact_arrays(None, n_train=400, n_validation=10, n_test=10, seed=0, **BUILTIN_DIGITS)
    target = arrays["train"].labels == 0
    torch.manual_seed(0)
    model = timm.create_model("simple_convnet", num_classes=10)
    folders = two_cavs(tmp_path, model, images_to_tensor(arrays["train"].images[target]),
                       torch.from_numpy(arrays["train"].artifact[target]))
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"cav": {"type": "categorical", "choices": [folders["pooled"], folders["spatial"]]},
                                 "rrclarc_lamb": {"type": "float", "low": 1.0, "high": 1000.0, "log": True}}))
    out = tmp_path / "sweep"
    assert main(["sweep", "--dataset", "controlled-artifact", "--model_name_or_path", "simple_convnet", "--image_size", "20",
                 "--debias", "rrclarc", "--cav", folders["pooled"], "--freeze", "before_layer",
                 "--allow_cav_mismatch", "true", "--bias_label_column", "artifact", "--max_train_samples", "96",
                 "--max_eval_samples", "64", "--max_steps", "2", "--n_trials", "2", "--search_space", str(space),
                 "--output_dir", str(out), "--seed", "0", *FAST]) == 0
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert len(trials) == 2 and all(trial["params"]["cav"] in folders.values() for trial in trials)
    assert {"train", "validation"} <= read_splits  # the spy sees the splits that are used ...
    assert not {split for split in read_splits if split.startswith("test")}  # ... and never a test split
    capsys.readouterr()
