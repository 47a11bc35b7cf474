"""``hf-debias compare`` on the built-in colour-digits in quick mode: the vanilla and the corrected run trained with
the same data, seed and budget, comparison.json equal to each run's eval_results.json, the corrected model's card
and report with both columns, a vanilla run reused (not retrained), and mismatched runs / ``--debias none`` refused
with one error line."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from hf_debias.cli import main
from hf_debias.cli.compare import COMPARED_METRICS, check_vanilla_run
from hf_debias.cli.train import DataArguments, ModelArguments, split_metrics
from hf_debias.metrics.group import groups_from_metrics
from hf_debias.training_args import DebiasTrainingArguments

FAST = ["--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--use_cpu", "true",
        "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no", "--logging_steps", "1"]
QUICK = ["--dataset", "colour-digits", "--colour_digits_train_size", "64", "--max_eval_samples", "40",
         "--max_steps", "2", "--seed", "1", *FAST]
SPLIT = "test_unbiased"


def _eval(folder):
    return json.loads((folder / "eval_results.json").read_text())


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "out"
    assert main(["compare", *QUICK, "--debias", "end", "--end_alpha", "5", "--output_dir", str(out)]) == 0
    return out


def test_compare_trains_both_runs_alike_and_the_comparison_is_their_eval_results(compared):
    vanilla, corrected = compared / "vanilla", compared / "corrected"
    arguments = {name: json.loads((folder / "training_args.json").read_text())
                 for name, folder in (("vanilla", vanilla), ("corrected", corrected))}
    assert (arguments["vanilla"]["debias"], arguments["corrected"]["debias"]) == ("none", "end")
    assert arguments["corrected"]["end_alpha"] == 5 and arguments["vanilla"]["end_alpha"] == 1.0  # its default
    for name in ("seed", "max_steps", "per_device_train_batch_size", "learning_rate"):
        assert arguments["vanilla"][name] == arguments["corrected"][name]
    assert not (vanilla / "debias_config.json").exists() and (corrected / "debias_config.json").is_file()
    for folder in (vanilla, corrected):
        state = json.loads((folder / "trainer_state.json").read_text())
        assert state["global_step"] == 2
        assert json.loads((folder / "train_results.json").read_text())["train_samples"] == 64
        assert json.loads((folder / "run_arguments.json").read_text())["data_arguments"]["rho"] == 0.99

    comparison = json.loads((compared / "comparison.json").read_text())
    assert comparison["debias"] == "end" and comparison["vanilla_trained_here"] is True
    assert list(comparison["splits"]) == [SPLIT] and comparison["splits"][SPLIT]["samples"] == 40
    split = comparison["splits"][SPLIT]
    results = {side: split_metrics(_eval(folder), [SPLIT])[SPLIT]
               for side, folder in (("vanilla", vanilla), ("corrected", corrected))}
    for key, _ in COMPARED_METRICS:
        row = split["metrics"][key]
        assert row["vanilla"] == results["vanilla"][key] and row["corrected"] == results["corrected"][key]
        assert row["difference"] == pytest.approx(results["corrected"][key] - results["vanilla"][key])
    # every (class, bias) group of either run, with both accuracies as the runs measured them
    groups = {side: {(g["label"], g["bias"]): g for g in groups_from_metrics(values)}
              for side, values in results.items()}
    assert {(g["label"], g["bias"]) for g in split["groups"]} == set(groups["vanilla"]) == set(groups["corrected"])
    assert sum(g["count"] for g in split["groups"]) == 40
    for row in split["groups"]:
        key = (row["label"], row["bias"])
        assert row["vanilla"] == groups["vanilla"][key]["accuracy"]
        assert row["corrected"] == groups["corrected"][key]["accuracy"]
        assert row["count"] == groups["vanilla"][key]["count"] and row["aligned"] == groups["vanilla"][key]["aligned"]
        assert row["class_name"] == str(row["label"]) and row["bias_name"] in ("red", "green", "blue", "yellow",
                                                                               "magenta", "cyan", "orange", "pink",
                                                                               "purple", "grey")
    markdown = (compared / "comparison.md").read_text()
    accuracy = split["metrics"]["accuracy"]
    assert (f"| accuracy         | {100 * accuracy['vanilla']:7.1f} | {100 * accuracy['corrected']:9.1f} | "
            f"{100 * accuracy['difference']:+10.1f} |") in markdown
    group_lines = re.findall(r"^\| .* \| +\d+ \| (?:aligned|conflicting) +\|", markdown, flags=re.M)
    assert len(group_lines) == len(split["groups"])  # the file has every group (the terminal the 20 worst)


def test_the_corrected_runs_report_and_card_show_the_vanilla_column(compared):
    vanilla = _eval(compared / "vanilla")
    report = json.loads((compared / "corrected" / "report.json").read_text())
    rows = report["results"][SPLIT]
    assert list(rows) == ["before: baseline", "after: end"]
    for key, _ in COMPARED_METRICS:
        assert rows["before: baseline"][key] == pytest.approx(vanilla[f"eval_{key}"])
    assert report["baseline_results"] == str(compared / "vanilla" / "eval_results.json")
    card = (compared / "corrected" / "README.md").read_text()
    assert "before (vanilla fine-tuning) | after (this model) |" in card
    for key in ("accuracy", "unbiased_accuracy", "worst_group_accuracy", "bias_conflicting_accuracy"):
        line = f"| {key.replace('_', ' ')} | {100 * vanilla[f'eval_{key}']:.1f} % | "
        assert line in card, line
        assert f"value: {vanilla[f'eval_{key}']}\n      name: '{key.replace('_', ' ')} (before: vanilla" in card


def test_an_existing_vanilla_run_is_reused_not_retrained(compared, tmp_path, capsys):
    vanilla = compared / "vanilla"
    mtimes = {path.name: path.stat().st_mtime_ns for path in vanilla.iterdir()}
    out = tmp_path / "again"
    assert main(["compare", *QUICK, "--debias", "end", "--end_alpha", "5", "--output_dir", str(out),
                 "--vanilla_run", str(vanilla)]) == 0
    assert {path.name: path.stat().st_mtime_ns for path in vanilla.iterdir()} == mtimes
    assert not (out / "vanilla").exists() and (out / "corrected" / "eval_results.json").is_file()
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["vanilla_trained_here"] is False and comparison["vanilla_run"] == str(vanilla)
    before = split_metrics(_eval(vanilla), [SPLIT])[SPLIT]
    for key, _ in COMPARED_METRICS:
        assert comparison["splits"][SPLIT]["metrics"][key]["vanilla"] == before[key]
    # the same seed and options: the corrected run is the first compare's, step for step
    first = json.loads((compared / "comparison.json").read_text())["splits"][SPLIT]["metrics"]
    assert comparison["splits"][SPLIT]["metrics"]["accuracy"]["corrected"] == first["accuracy"]["corrected"]
    assert f"Vanilla: {vanilla} (reused)" in capsys.readouterr().out


@pytest.mark.parametrize(("extra", "message"), [
    (["--seed", "2", "--max_steps", "3"],
     "was not trained like this run: --seed: vanilla run 1, this run 2; --max_steps: vanilla run 2, this run 3."),
    (["--rho", "0.9"], "was not trained like this run: --rho: vanilla run 0.99, this run 0.9."),
    (["--model_name_or_path", "resnet18"], "--model_name_or_path: vanilla run 'simple_convnet', this run "
                                           "'resnet18'."),
])
def test_a_mismatched_vanilla_run_is_refused_naming_the_fields(compared, tmp_path, capsys, extra, message):
    argv = ["compare", *QUICK, "--debias", "end", "--output_dir", str(tmp_path / "o"), "--vanilla_run",
            str(compared / "vanilla"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"hf-debias: error: --vanilla_run {compared / 'vanilla'} ") and message in err[-1]
    assert not (tmp_path / "o").exists()  # refused before any training


def test_a_vanilla_run_made_by_train_is_checked_on_what_it_records(compared, tmp_path):
    """A `hf-debias train` run has report.json and training_args.json but no run_arguments.json: the data it saw is
    compared with this run's, and what is not recorded is named in a warning."""
    folder = tmp_path / "train_run"
    shutil.copytree(compared / "vanilla", folder)
    (folder / "run_arguments.json").unlink()
    parsed = dict(model_args=ModelArguments(), training_args=DebiasTrainingArguments(
        output_dir=str(tmp_path / "o"), debias="end", seed=1, max_steps=2, per_device_train_batch_size=8,
        use_cpu=True, report_to="none"))
    with pytest.warns(UserWarning, match=r"does not record --pretrained, --model_revision, --label_column, .*--rho, "
                                         r"--colour_digits_train_size: these cannot be checked"):
        check_vanilla_run(folder, data_args=DataArguments(colour_digits_train_size=64, max_eval_samples=40),
                          **parsed)
    with pytest.raises(ValueError, match=r"eval_samples: vanilla run \{'test_unbiased': 40\}, this run "
                                         r"\{'test_unbiased': 30\}"):
        check_vanilla_run(folder, data_args=DataArguments(colour_digits_train_size=64, max_eval_samples=30),
                          **parsed)
    with pytest.raises(ValueError, match=r"train_samples: vanilla run 64, this run 48"):
        check_vanilla_run(folder, data_args=DataArguments(colour_digits_train_size=64, max_eval_samples=40,
                                                          max_train_samples=48), **parsed)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(folder / "eval_results.json", bare)
    with pytest.warns(UserWarning, match=r"records nothing but eval_results.json .*: its data, model, seed and "
                                         r"budget cannot be checked"):
        check_vanilla_run(bare, data_args=DataArguments(), **parsed)


@pytest.mark.parametrize(("argv", "message"), [
    (["--debias", "none"], "--debias none: there is nothing to compare with the vanilla model; choose a correction "
                           "with --debias ("),
    (["--debias", "end", "--vanilla_run", "{corrected}"], "it was trained with --debias end (debias_config.json is "
                                                          "there), so it is not a vanilla run"),
    (["--debias", "end", "--vanilla_run", "{missing}"], "--vanilla_run {missing}: no such folder."),
    (["--debias", "end", "--vanilla_run", "{out}"], "the folder has no eval_results.json"),
    (["--debias", "end", "--baseline_results", "{vanilla}"], "compare sets it to the vanilla run's "
                                                             "eval_results.json; pass an existing vanilla run as "
                                                             "--vanilla_run instead."),
])
def test_bad_input_is_one_error_line_and_exit_2(compared, tmp_path, capsys, argv, message):
    paths = {"corrected": compared / "corrected", "missing": tmp_path / "missing", "out": compared,
             "vanilla": compared / "vanilla"}
    argv = [token.format(**paths) for token in argv]
    assert main(["compare", *QUICK, "--output_dir", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("hf-debias: error: ") and message.format(**paths) in err[-1], err[-1]
    assert not (tmp_path / "o").exists()


def test_compare_help_documents_vanilla_run(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: hf-debias compare")
    assert text.index("debias (hf_debias):") < text.index("\ncompare:") < text.index("training (transformers")
    assert "--vanilla_run DIR" in text and "OUTPUT_DIR/vanilla" in text and "--end_alpha" in text
