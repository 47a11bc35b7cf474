"""Pseudo bias labels: a biased auxiliary model's clusters recover the colour of Colour-Digits, reproducibly, and
feed EnD (wrapper, benchmark, Trainer, CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch

import hf_debias
from hf_debias import EnDConfig, PseudoLabelConfig, PseudoLabels, get_debias_model, pseudo_bias_labels
from hf_debias.data import colour_digits_arrays
from hf_debias.fit_loop import FitConfig, fit, images_to_tensor
from hf_debias.pseudo_labels import assign_bias_ids, gce_loss

FAST = PseudoLabelConfig(epochs=3.0, batch_size=128, seed=0)


@pytest.fixture(scope="module")
def digits():
    train = colour_digits_arrays(0.99, n_train=1200, n_validation=100, n_test=100, image_size=16, seed=0)["train"]
    return images_to_tensor(train.images), torch.from_numpy(train.labels), train.bias_labels


@pytest.fixture(scope="module")
def result(digits):
    x, y, b = digits
    torch.manual_seed(0)
    return pseudo_bias_labels(timm.create_model("simple_convnet", num_classes=10), x, y, FAST, bias_labels=b,
                              progress=False)


def test_config_json_round_trip_and_validation():
    config = PseudoLabelConfig(loss="ce", epochs=0.5, n_clusters=4, assignment="prediction", seed=3)
    assert PseudoLabelConfig.from_dict(json.loads(config.to_json_string())) == config
    for bad, match in [(dict(loss="mse"), "loss='mse' is not valid; choose one of: 'gce', 'ce'"),
                       (dict(q=0.0), r"q must be a number in \(0, 1\], got 0.0"),
                       (dict(epochs=-1), "epochs must be"), (dict(n_clusters=1), "n_clusters must be an integer >= 2"),
                       (dict(assignment="per_class"), "assignment='per_class' is not valid"),
                       (dict(seed=-1), "seed must be an integer >= 0"), (dict(batch_size=True), "batch_size")]:
        with pytest.raises(ValueError, match=match):
            PseudoLabelConfig(**bad)
    with pytest.raises(ValueError, match=r"Unknown pseudo-label config keys \['k'\]"):
        PseudoLabelConfig.from_dict({"k": 3})


def test_gce_loss_values():
    logits = torch.log(torch.tensor([[0.25, 0.75], [0.5, 0.5]]))
    expected = ((1 - 0.75 ** 0.7) / 0.7 + (1 - 0.5 ** 0.7) / 0.7) / 2
    assert gce_loss(logits, torch.tensor([1, 0]), 0.7).item() == pytest.approx(expected, rel=1e-5)
    # q -> 0 is the cross-entropy; q = 1 is the mean absolute error 1 - p_y.
    assert gce_loss(logits, torch.tensor([1, 0]), 1.0).item() == pytest.approx((0.25 + 0.5) / 2, rel=1e-5)


def test_pseudo_labels_recover_the_colour_and_are_reproducible(digits, result):
    x, y, b = digits
    assert result.labels.shape == (1200,) and result.labels.dtype == np.int64
    assert result.centres.shape == (10, 128)  # k = number of classes, the pooled features of simple_convnet
    assert result.ari is not None and result.ari > 0.9, result.ari  # colour recovered by the biased model
    assert result.train_seconds > 0 and result.tensor.dtype == torch.long
    torch.manual_seed(0)
    again = pseudo_bias_labels(lambda: timm.create_model("simple_convnet", num_classes=10), x, y, FAST,
                               progress=False)
    np.testing.assert_array_equal(again.labels, result.labels)  # factory seeded by config.seed: same init
    other = pseudo_bias_labels(lambda: timm.create_model("simple_convnet", num_classes=10), x, y,
                               PseudoLabelConfig(epochs=3.0, batch_size=128, seed=1), progress=False)
    assert not np.array_equal(other.labels, result.labels)  # the seed is what changes them


def test_the_given_model_is_not_trained(digits):
    x, y, _ = digits
    model = timm.create_model("simple_convnet", num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = pseudo_bias_labels(model, x[:256], y[:256], PseudoLabelConfig(epochs=1.0, batch_size=64), progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert out.model is not model


def test_assignments_share_ids_across_classes():
    # Two classes, two colours: the feature is the colour; a bias id must name the colour in both classes.
    features = np.array([[1, 0], [1, 0], [0, 1], [1, 0], [0, 1], [0, 1]], dtype=np.float32)
    labels = np.array([0, 0, 0, 1, 1, 1])
    for assignment in ("global", "aligned"):
        ids, centres = assign_bias_ids(features, labels, labels, assignment, 2, 0)
        assert ids[0] == ids[1] == ids[3] and ids[2] == ids[4] == ids[5] and ids[0] != ids[2], assignment
        assert centres.shape == (2, 2)
    ids, _ = assign_bias_ids(features, labels, np.array([0, 0, 1, 0, 1, 1]), "prediction", 2, 0)
    assert ids.tolist() == [0, 0, 1, 0, 1, 1]


def test_save_and_load_round_trip_and_refuse_damage(tmp_path, result):
    folder = result.save_pretrained(tmp_path / "pl")
    assert sorted(p.name for p in folder.iterdir()) == ["auxiliary_model.safetensors", "pseudo_labels.json",
                                                       "pseudo_labels.safetensors"]
    record = json.loads((folder / "pseudo_labels.json").read_text())
    assert record["seed"] == 0 and record["config"]["loss"] == "gce"
    assert len(record["files"]["pseudo_labels.safetensors"]) == 64  # its sha256
    model = timm.create_model("simple_convnet", num_classes=10)
    loaded = PseudoLabels.from_pretrained(folder, model=model)
    np.testing.assert_array_equal(loaded.labels, result.labels)
    np.testing.assert_allclose(loaded.centres, result.centres)
    assert loaded.config == result.config and loaded.ari == pytest.approx(result.ari)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), result.model.state_dict().values()))
    result.save_pretrained(folder)  # over an earlier save: replaced in place
    assert PseudoLabels.from_pretrained(folder).labels.shape == (1200,)

    arrays = folder / "pseudo_labels.safetensors"
    arrays.write_bytes(arrays.read_bytes()[:-7])
    with pytest.raises(ValueError, match=r"pseudo_labels.safetensors does not match the sha256"):
        PseudoLabels.from_pretrained(folder)
    (folder / "pseudo_labels.json").write_text('{"format_version": 1, "config": {}')
    with pytest.raises(ValueError, match=r"pseudo_labels.json \(pseudo-label record\) is not valid JSON"):
        PseudoLabels.from_pretrained(folder)
    record["config"]["q"] = 7
    (folder / "pseudo_labels.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"pseudo_labels.json: invalid config: q must be"):
        PseudoLabels.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="not a saved PseudoLabels folder"):
        PseudoLabels.from_pretrained(tmp_path)


def test_wrapper_path_trains_end_on_the_pseudo_labels(digits, result):
    x, y, _ = digits
    assert hf_debias.pseudo_bias_labels is pseudo_bias_labels
    torch.manual_seed(0)
    model = get_debias_model(timm.create_model("simple_convnet", num_classes=10), EnDConfig(alpha=10, beta=1))
    history = fit(model, x, y, result.tensor, FitConfig(epochs=0.25, batch_size=128), progress=False)
    assert history.steps == 2
    assert set(history.losses) == {"loss", "ce_loss", "end_r_ortho", "end_r_par"}
    assert all(np.isfinite(v).all() for v in history.losses.values())
    assert max(history.losses["end_r_ortho"]) > 0  # same-pseudo-bias pairs exist: the penalty acts
    np.testing.assert_allclose(history.losses["loss"], np.array(history.losses["ce_loss"])
                               + 10 * np.array(history.losses["end_r_ortho"])
                               + np.array(history.losses["end_r_par"]), rtol=1e-5)


def test_benchmark_quick_mode_reports_the_pseudo_label_row(tmp_path):
    from test_cli_and_demo import load_benchmark

    benchmark = load_benchmark("end_colour_digits")
    common = ["--quick", "--threads", "1", "--fixed", "10,1", "--methods", "vanilla", "end_nf_train", "end_pseudo"]
    results = benchmark.main([*common, "--pseudo-compare-assignments", "--output", str(tmp_path / "p.json")])
    entry = results["rhos"]["0.99"]
    assert set(entry["report"]) == {"vanilla", "end_nf_train", "end_pseudo"}
    assert entry["selection"]["normalize_forward=train"] == {"fixed": True, "chosen": {"alpha": 10.0, "beta": 1.0}}
    row = entry["runs"]["end_pseudo"][0]
    assert 0.0 <= row["ari"] <= 1.0 and row["aux_train_seconds"] > 0
    assert set(row["assignment_ari"]) == {"global", "prediction", "aligned"}
    assert row["assignment_ari"]["global"] == pytest.approx(row["ari"])  # the default assignment
    table = (tmp_path / "p.md").read_text()
    assert "EnD, pseudo bias labels" in table and "ARI" in table and "fixed (no validation selection)" in table
    # Seeds split over processes merge into one entry per method (seed 0 here, seed 1 in the other file).
    other = json.loads((tmp_path / "p.json").read_text())
    for rows in other["rhos"]["0.99"]["runs"].values():
        rows[0]["seed"] = 1
    (tmp_path / "s1.json").write_text(json.dumps(other))
    merged = benchmark.main(["--merge", str(tmp_path / "p.json"), str(tmp_path / "s1.json"),
                             "--output", str(tmp_path / "m.json")])["rhos"]["0.99"]
    assert [row["seed"] for row in merged["runs"]["end_pseudo"]] == [0, 1]
    assert merged["report"]["vanilla"]["seeds"] == [0, 1] and len(merged["report"]["end_pseudo"]["ari"]["values"]) == 2
    with pytest.raises(SystemExit, match="already in another file"):
        benchmark.main(["--merge", str(tmp_path / "p.json"), str(tmp_path / "p.json"),
                        "--output", str(tmp_path / "x.json")])


# ---------------------------------------------------------------- Trainer and CLI (--bias_label_column auto)
def _trainer_args(tmp_path, **kwargs):
    from hf_debias import DebiasTrainingArguments

    return DebiasTrainingArguments(output_dir=str(tmp_path / "run"), debias="end", end_alpha=10.0,
                                   per_device_train_batch_size=32, max_steps=3, use_cpu=True, report_to="none",
                                   save_strategy="no", disable_tqdm=True, logging_steps=1, **kwargs)


def test_training_arguments_refuse_auto_without_end_and_pseudo_options_without_auto(tmp_path):
    with pytest.raises(ValueError, match="--bias_label_column auto computes pseudo bias labels for EnD, but "
                                         "--debias none"):
        _trainer_args(tmp_path, bias_label_column="auto").__class__(output_dir=str(tmp_path), debias="none",
                                                                   bias_label_column="auto")
    with pytest.raises(ValueError, match=r"--debias rrclarc \(rrclarc\) reads no bias labels"):
        _trainer_args(tmp_path).__class__(output_dir=str(tmp_path), debias="rrclarc", cav="x",
                                          bias_label_column="auto")
    with pytest.raises(ValueError, match=r"--pseudo_epochs 2.0: the --pseudo_\* options apply to pseudo bias "
                                         r"labels only, but --bias_label_column is 'bias_labels'"):
        _trainer_args(tmp_path, pseudo_epochs=2.0)
    with pytest.raises(ValueError, match=r"--pseudo_\* options .*q must be a number in \(0, 1\], got 2.0"):
        _trainer_args(tmp_path, bias_label_column="auto", pseudo_q=2.0)
    args = _trainer_args(tmp_path, bias_label_column="auto", pseudo_epochs=0.5, seed=7)
    assert args.pseudo_label_config() == PseudoLabelConfig(epochs=0.5, seed=7)


def test_trainer_auto_computes_saves_and_trains_end_on_pseudo_labels(tmp_path, digits):
    import datasets

    from hf_debias import DebiasTrainer

    x, y, b = digits
    n = 384
    data = datasets.Dataset.from_dict({"pixel_values": x[:n].numpy(), "labels": y[:n].numpy()}).with_format("torch")
    args = _trainer_args(tmp_path, bias_label_column="auto", pseudo_epochs=3.0, pseudo_batch_size=64, seed=0)
    torch.manual_seed(0)
    trainer = DebiasTrainer(model=timm.create_model("simple_convnet", num_classes=10), args=args,
                            train_dataset=data)
    trainer.train()
    result = trainer.pseudo_labels
    assert result.labels.shape == (n,) and len(np.unique(result.labels)) > 1
    assert trainer.train_dataset[5]["bias_labels"] == result.labels[5]
    saved = PseudoLabels.from_pretrained(tmp_path / "run" / "pseudo_bias_labels",
                                         model=timm.create_model("simple_convnet", num_classes=10))
    np.testing.assert_array_equal(saved.labels, result.labels)
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(b[:n], result.labels) > 0.5  # the colour, found without any bias label
    logged = {key for row in trainer.state.log_history for key in row}
    assert any("r_ortho" in key for key in logged), logged  # EnD's penalty ran on the pseudo labels

    with_bias = data.add_column("bias_labels", b[:n].tolist())
    with pytest.raises(ValueError, match="already has a 'bias_labels' column. Use it"):
        DebiasTrainer(model=timm.create_model("simple_convnet", num_classes=10), args=args, train_dataset=with_bias)


def test_cli_train_end_with_auto_bias_labels_on_a_folder_without_bias_column(tmp_path):
    import image_layouts as layouts
    from hf_debias.cli import main

    folder = layouts.write_class_folders(tmp_path / "data")
    out = tmp_path / "out"
    assert main(["train", "--model_name_or_path", "simple_convnet", "--dataset", str(folder), "--debias", "end",
                 "--bias_label_column", "auto", "--pseudo_epochs", "2", "--pseudo_batch_size", "8",
                 "--output_dir", str(out), "--num_train_epochs", "1", "--per_device_train_batch_size", "4",
                 "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no"]) == 0
    record = json.loads((out / "pseudo_bias_labels" / "pseudo_labels.json").read_text())
    assert record["n_samples"] == sum(layouts.CLASS_FOLDER_COUNTS["train"].values())
    assert record["n_clusters"] == 3 and record["config"]["loss"] == "gce"
    assert (out / "pseudo_bias_labels" / "auxiliary_model.safetensors").is_file()
    assert (out / "model.safetensors").is_file() or (out / "hf_debias_model.safetensors").is_file()


def test_cli_auto_on_data_with_a_bias_column_trains_on_pseudo_labels_and_measures_on_the_true_ones(tmp_path,
                                                                                                  caplog):
    import json
    import logging

    from hf_debias.cli import main

    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="hf_debias"):
        assert main(["train", "--dataset", "colour-digits", "--colour_digits_train_size", "256", "--max_eval_samples",
                     "24", "--max_steps", "1", "--per_device_train_batch_size", "32", "--debias", "end",
                     "--bias_label_column", "auto", "--pseudo_epochs", "0.5", "--use_cpu", "true", "--report_to",
                     "none", "--disable_tqdm", "true", "--save_strategy", "no", "--output_dir", str(out)]) == 0
    assert "training uses pseudo bias labels instead of it" in caplog.text  # said, not silent
    saved = json.loads((out / "pseudo_bias_labels" / "pseudo_labels.json").read_text())
    assert saved["n_samples"] == 256 and saved["n_clusters"] == 10  # the whole training split, one id per class
    report = json.loads((out / "report.json").read_text())
    assert sum(group["count"] for group in report["groups"]["test_unbiased"]) == 24  # true colours measure it
