"""The demo, the CLI and the benchmark quick modes run end to end and produce what they promise."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hf_debias.cli import build_parser, main
from hf_debias.demo import quick_settings, run_demo

ROOT = Path(__file__).resolve().parents[1]


def test_demo_quick_writes_report_and_compares_both_models(tmp_path, capsys):
    results = run_demo(quick_settings(tmp_path))
    rows = results["end"]
    assert set(rows) == {"vanilla", "EnD"}
    for values in rows.values():
        assert set(values) == {"unbiased_accuracy", "bias_conflicting_accuracy", "biased_accuracy",
                               "worst_group_accuracy"}
        assert all(0.0 <= v <= 1.0 for v in values.values())
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["results"] == rows and report["end_config"]["debias_method"] == "end"
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    artifact_rows = results["rrclarc"]
    assert set(artifact_rows) == {"vanilla", "lambda=0 control", "RR-ClArC"}
    for values in artifact_rows.values():
        assert 0.0 <= values["clean_accuracy"] <= 1.0 and 0.0 <= values["attacked_accuracy"] <= 1.0
        assert values["attack_drop"] == pytest.approx(values["clean_accuracy"] - values["attacked_accuracy"])
    report = json.loads((tmp_path / "rrclarc_report.json").read_text())
    assert report["results"] == artifact_rows and report["cav"]["concept"] == "corner patch"
    assert (tmp_path / "rrclarc_report.png").read_bytes()[:4] == b"\x89PNG"
    # where the models look: R_bias for vanilla and RR-ClArC (share of |attribution| in the patch) and the heatmaps
    assert all(0.0 <= artifact_rows[name]["artifact_relevance"] <= 1.0 for name in ("vanilla", "RR-ClArC"))
    assert (tmp_path / "rrclarc_heatmaps.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "artifact relevance R_bias" in out and "rrclarc_heatmaps.png" in out
    assert "bias-conflicting" in out and "vanilla" in out and "report.png" in out and "attacked" in out
    # each corrected model is saved as it would go to the Hub, with a card comparing it with vanilla
    from hf_debias import load_model

    for folder in ("end_model", "rrclarc_model"):
        card = (tmp_path / folder / "README.md").read_text()
        assert "![before vs after](report.png)" in card and "before (vanilla, same recipe)" in card
        assert isinstance(load_model(tmp_path / folder), __import__("hf_debias").DebiasModel)
    assert 0.0 <= artifact_rows["RR-ClArC"]["tcav_score"] <= 1.0 and "| test | tcav pooled sensitivity |" in card


def test_cli_demo_quick(tmp_path):
    assert main(["demo", "--quick", "--no-progress", "--output-dir", str(tmp_path)]) == 0
    assert (tmp_path / "report.json").is_file()


def test_cli_layers_lists_shapes(capsys):
    assert main(["layers", "resnet18", "--input-size", "3", "32", "32", "--features-only"]) == 0
    out = capsys.readouterr().out
    assert "* layer3" in out and "256x2x2" in out and "conv1 " not in out


def test_cli_layers_bad_model_is_a_clear_error(capsys):
    assert main(["layers", "resnet1800"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-debias: error: 'resnet1800' is neither a timm model name") and err.count("\n") == 1


def test_cli_layers_builds_a_vit_at_the_input_size(capsys):
    # test_vit is built for 160 px in patches of 16; at 96 px it has 6 x 6 = 36 patch tokens plus the class token
    assert main(["layers", "test_vit", "--input-size", "3", "96", "96", "--features-only"]) == 0
    out = capsys.readouterr().out
    assert "input 3x96x96" in out and "* blocks.0" in out and "37x" in out
    assert main(["layers", "vit_tiny_patch16_224", "--input-size", "3", "96", "64"]) == 2  # not square: no img_size
    err = capsys.readouterr().err  # timm's own size check, as one line
    assert err.startswith("hf-debias: error: AssertionError: Input height (96) doesn't match model (224)")
    assert err.count("\n") == 1


def test_cli_layers_default_input_size_of_a_transformers_model(tmp_path, capsys):
    from transformers import ViTConfig, ViTForImageClassification

    ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, num_hidden_layers=1, hidden_size=32,
                                        num_attention_heads=2, intermediate_size=37)).save_pretrained(tmp_path)
    assert main(["layers", str(tmp_path)]) == 0
    assert "input 3x16x16" in capsys.readouterr().out


def _fail_with(monkeypatch, error: Exception | None = None, call=None):
    """Make `hf-debias layers` raise ``error`` (or run ``call``) instead of building a model."""
    from hf_debias.cli import layers

    def run(args):
        if call is not None:
            call()
        raise error

    monkeypatch.setattr(layers, "run", run)


@pytest.mark.parametrize("error, line", [
    (ValueError("bad column 'y'"), "hf-debias: error: bad column 'y'"),
    (FileNotFoundError("[Errno 2] No such file or directory: 'x.csv'"),
     "hf-debias: error: [Errno 2] No such file or directory: 'x.csv'"),
    (KeyError("image"), "hf-debias: error: KeyError: 'image' (--debug shows the traceback)"),
    (OSError("We couldn't connect to\n'https://huggingface.co'"),
     "hf-debias: error: We couldn't connect to 'https://huggingface.co'"),
])
def test_user_errors_are_one_line_on_stderr_and_exit_2(monkeypatch, capsys, error, line):
    _fail_with(monkeypatch, error)
    assert main(["layers", "resnet18"]) == 2
    captured = capsys.readouterr()
    assert captured.err == line + "\n" and captured.out == ""
    for argv in (["--debug", "layers", "resnet18"], ["layers", "resnet18", "--debug"]):  # the traceback instead
        with pytest.raises(type(error)):
            main(argv)


def test_errors_from_inside_the_libraries_are_user_errors(monkeypatch, capsys):
    import timm

    _fail_with(monkeypatch, call=lambda: timm.create_model("no_such_model"))  # timm: RuntimeError("Unknown model")
    assert main(["layers", "x"]) == 2
    assert capsys.readouterr().err == ("hf-debias: error: RuntimeError: Unknown model (no_such_model) "
                                       "(--debug shows the traceback)\n")


def test_a_bug_in_our_code_keeps_its_traceback(monkeypatch):
    from hf_debias.cli import is_user_error

    _fail_with(monkeypatch, AssertionError("internal invariant"))
    with pytest.raises(AssertionError, match="internal invariant"):
        main(["layers", "resnet18"])
    assert not is_user_error(TypeError("unexpected keyword")) and not is_user_error(RuntimeError("ours"))


def test_a_dataset_error_is_one_line(tmp_path, capsys):
    assert main(["cav", "simple_convnet", "--dataset", str(tmp_path / "missing" / "folder"), "--output-dir",
                 str(tmp_path / "cav"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-debias: error: ") and err.count("\n") == 1 and "missing" in err


def test_a_bare_debug_after_train_is_ours_and_debug_with_a_value_is_the_trainers():
    from hf_debias.cli import _split_train_arguments

    assert _split_train_arguments(["train", "--output_dir", "o", "--debug"]) == (["train", "--", "--output_dir", "o"],
                                                                                True)
    assert _split_train_arguments(["--debug", "train", "--debug", "--max_steps", "1"]) == (
        ["--debug", "train", "--", "--max_steps", "1"], True)
    assert _split_train_arguments(["train", "--debug", "underflow_overflow"]) == (
        ["train", "--", "--debug", "underflow_overflow"], False)
    assert _split_train_arguments(["layers", "resnet18", "--debug"]) == (["layers", "resnet18", "--debug"], False)


def _commands():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {name: sub for name, sub in subparsers.choices.items() if name != "train"}


def test_every_option_takes_both_spellings():
    from hf_debias.cli._parsing import other_spelling

    for name, sub in _commands().items():
        for action in sub._actions:
            for option in action.option_strings:
                alias = other_spelling(option)
                if alias is not None:
                    assert sub.declared_spelling([alias, "x"]) == [option, "x"], f"hf-debias {name} {alias}"
                    assert sub.declared_spelling([f"{alias}=1"]) == [f"{option}=1"]
    parser = build_parser()
    dashes = parser.parse_args(["cav", "m", "--output-dir", "o", "--only-class", "0", "--max-samples", "3",
                                "--no-progress", "--validation-fraction", "0.5"])
    underscores = parser.parse_args(["cav", "m", "--output_dir", "o", "--only_class", "0", "--max_samples", "3",
                                     "--no_progress", "--validation_fraction", "0.5"])
    assert vars(dashes) == vars(underscores) and dashes.only_class == 0 and dashes.validation_fraction == 0.5
    assert parser.parse_args(["demo", "--normalize_forward", "never", "--n_train", "5"]).normalize_forward == "never"
    assert parser.parse_args(["demo", "--normalize-forward=always", "--n-train=5"]).n_train == 5
    assert parser.parse_args(["demo"]).normalize_forward is None  # EnDConfig's default: portable where exact


def test_every_command_shows_its_defaults():
    commands = _commands()
    cav_help = commands["cav"].format_help()
    for shown in ("(default: train)", "(default: signal)", "(default: auto)", "(default: 0.1)", "(default: 64)"):
        assert shown in cav_help
    assert "(default: None)" not in cav_help and "(default: False)" not in cav_help  # nothing said is better
    assert "(default: 0.99)" in commands["demo"].format_help()
    assert "(default: 3.0)" in commands["demo"].format_help()  # --epochs


def test_the_cav_command_offers_the_librarys_choices():
    from hf_debias.cav.fitting import CAV_METHODS
    from hf_debias.cav.pooling import POOLING_CHOICES
    from hf_debias.cli import cav

    assert cav.CAV_METHODS == CAV_METHODS and cav.POOLING_CHOICES == POOLING_CHOICES


def test_building_the_parsers_imports_no_heavy_library():
    # hf_debias/__init__.py itself is left out (a stub package stands in for it): this checks the command line's
    # own modules, which `--help` imports.
    code = (
        "import importlib.util, sys, types\n"
        "spec = importlib.util.find_spec('hf_debias')\n"
        "package = types.ModuleType('hf_debias')\n"
        "package.__path__ = list(spec.submodule_search_locations)\n"
        "package.__version__ = '0'\n"
        "sys.modules['hf_debias'] = package\n"
        "from hf_debias.cli import build_parser\n"
        "build_parser().format_help()\n"
        "print(','.join(m for m in ('torch', 'timm', 'transformers', 'datasets') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_every_option_has_help():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help, f"hf-debias {name} {action.option_strings or action.dest} has no help"


def test_console_script_help_runs():
    result = subprocess.run([sys.executable, "-m", "hf_debias.cli", "demo", "--help"], capture_output=True,
                            text=True, check=True)
    assert "--normalize-forward" in result.stdout and "--output-dir" in result.stdout


def load_benchmark(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so that spawned workers can pickle the module's functions by name
    spec.loader.exec_module(module)
    return module


def test_effectiveness_benchmark_quick_mode_and_merge(tmp_path):
    benchmark = load_benchmark("end_colour_digits")
    # Separate processes may run separate methods; --merge combines them into one table.
    benchmark.main(["--quick", "--methods", "vanilla", "--output", str(tmp_path / "a.json")])
    benchmark.main(["--quick", "--methods", "end_nf_false", "end_nf_true", "--output", str(tmp_path / "b.json")])
    results = benchmark.main(["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                              "--output", str(tmp_path / "r.json")])
    entry = results["rhos"]["0.99"]
    assert set(entry["report"]) == {"vanilla", "end_nf_false", "end_nf_true"}
    assert set(entry["selection"]) == {"normalize_forward=False", "normalize_forward=True"}
    assert 0.0 <= entry["report"]["vanilla"]["unbiased"]["mean"] <= 1.0
    assert "| 0.99 |" in (tmp_path / "r.md").read_text()
    assert len(json.loads((tmp_path / "r.json").read_text())["merged_from"]) == 2
    with pytest.raises(SystemExit, match="already in another file"):
        benchmark.main(["--merge", str(tmp_path / "a.json"), str(tmp_path / "a.json"),
                        "--output", str(tmp_path / "twice.json")])


def test_cli_train_end_to_end_on_colour_digits(tmp_path, capsys):
    code = main(["train", "--model_name_or_path", "simple_convnet", "--dataset", "colour-digits",
                 "--colour_digits_train_size", "256", "--max_eval_samples", "128", "--output_dir", str(tmp_path),
                 "--debias", "end", "--end_alpha", "10", "--max_steps", "2", "--per_device_train_batch_size", "32",
                 "--use_cpu", "true", "--report_to", "none", "--logging_steps", "1", "--disable_tqdm", "true"])
    assert code == 0
    out = capsys.readouterr().out
    assert "bias-conflicting" in out and "simple_convnet (end)" in out
    assert (tmp_path / "model.safetensors").is_file()
    config = json.loads((tmp_path / "debias_config.json").read_text())
    assert config["debias_method"] == "end" and config["alpha"] == 10.0
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert 0.0 <= results["eval_worst_group_accuracy"] <= results["eval_unbiased_accuracy"] <= 1.0


def test_cli_train_push_to_hub_pushes_one_commit_with_a_card(tmp_path, monkeypatch):
    from huggingface_hub import ModelCard

    from hub_cache import FakeHub, offline_cache

    hub = FakeHub(offline_cache(monkeypatch, tmp_path))
    with hub.patch():
        code = main(["train", "--model_name_or_path", "simple_convnet", "--dataset", "colour-digits",
                     "--colour_digits_train_size", "128", "--max_eval_samples", "64", "--output_dir",
                     str(tmp_path / "run"), "--debias", "end", "--max-steps", "2", "--per-device-train-batch-size",
                     "32", "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true", "--push-to-hub",
                     "--hub-model-id", "org/cd-end", "--bias-description", "digit colour"])
    assert code == 0
    assert [commit["repo_id"] for commit in hub.commits] == ["org/cd-end"]
    assert hub.commits[0]["files"] == ["README.md", "config.json", "debias_config.json", "model.safetensors",
                                       "report.png"]  # the chart the card shows
    card = ModelCard(hub.contents["org/cd-end"]["README.md"].decode())
    assert card.data.eval_results and "digit colour" in card.text and "colour-digits" in card.text


def test_cli_train_help_documents_every_option():
    from transformers import HfArgumentParser

    from hf_debias.cli.train import DataArguments, ModelArguments
    from hf_debias.trainer import DebiasTrainingArguments

    parser = HfArgumentParser((ModelArguments, DataArguments, DebiasTrainingArguments))
    ours = {f for cls in (ModelArguments, DataArguments) for f in cls.__dataclass_fields__} | {
        "debias", "debias_layer", "bias_label_column", "end_alpha", "end_beta", "end_pairing", "end_normalize_forward",
        "cav", "allow_cav_mismatch", "freeze", "rrclarc_lamb", "rrclarc_gradient_target", "rrclarc_target_class",
        "rrclarc_aggregation"}
    for action in parser._actions:
        if action.dest in ours:
            assert action.help, f"--{action.dest} has no help"
    from hf_debias import available_methods
    from hf_debias.functional.rr_clarc import GRADIENT_TARGETS

    result = subprocess.run([sys.executable, "-m", "hf_debias.cli", "train", "--help"], capture_output=True,
                            text=True, check=True)
    assert f"bias correction method: {', '.join(['none', *available_methods()])}; several" in " ".join(
        result.stdout.split())  # every method listed (a comma-separated list composes them, so no argparse choices)
    assert "--end_alpha" in result.stdout
    assert f"--rrclarc_gradient_target {{{','.join(GRADIENT_TARGETS)}}}" in result.stdout
    position = 0  # the model, data and debias options come before the Trainer's
    for marker in ("--model_name_or_path MODEL_NAME_OR_PATH", "--dataset DATASET", "--debias DEBIAS", "--end_alpha",
                   "--learning_rate LEARNING_RATE"):
        position = result.stdout.index(marker, position)


def test_rr_clarc_benchmark_quick_mode(tmp_path):
    results = load_benchmark("rr_clarc_artifact").main(["--quick", "--output", str(tmp_path / "rr.json"),
                                                        "--lamb-grid", "0", "1000", "--rrr-lamb-grid", "0", "1"])
    [combination] = results["combinations"]  # --quick: the patch on class 0
    assert (combination["artifact"], combination["target_class"]) == ("patch", 0)
    selection = combination["per_seed"][0]["lamb_selection"]
    assert set(selection["scores"]) == {"0", "1000"} and selection["chosen_lamb"] in (0.0, 1000.0)
    assert selection["scores"][f"{selection['chosen_lamb']:g}"] == max(selection["scores"].values())
    rrr_selection = combination["per_seed"][0]["rrr_lamb_selection"]  # RRR's λ, also chosen on validation digits
    assert set(rrr_selection["scores"]) == {"0", "1"}
    assert rrr_selection["scores"][f"{rrr_selection['chosen_lamb']:g}"] == max(rrr_selection["scores"].values())
    rows = combination["summary"]["accuracy"]
    assert set(rows) == {"vanilla", "no-shortcut reference", "λ=0 control", "P-ClArC", "A-ClArC", "RR-ClArC", "RRR",
                         "spatial λ=0 control", "RR-ClArC spatial", "RR-ClArC chosen"}
    assert all(0.0 <= row["attacked_accuracy"]["mean"] <= 1.0 for row in rows.values())
    assert all(0.0 <= row["artifact_relevance"]["mean"] <= 1.0 for row in rows.values())
    # LRP where zennit's rules cover the model; P-ClArC's projection changes the forward pass: input x gradient
    assert rows["vanilla"]["attribution_method"]["values"] == ["lrp"]
    assert rows["P-ClArC"]["attribution_method"]["values"] == ["input_x_gradient"]
    choice = combination["per_seed"][0]["recipe_choice"]  # chosen on validation digits: the better of the two there
    assert choice["chosen"] == max(choice["scores"], key=choice["scores"].get)
    assert combination["per_seed"][0]["rows"]["RR-ClArC chosen"] == combination["per_seed"][0]["rows"][choice["chosen"]]
    assert set(combination["summary"]["cav_alignment"]) == {"signal", "svm", "ridge", "lasso", "logistic"}
    assert all(results["step_time"][recipe]["ratio"] > 0 for recipe in ("pooled", "spatial", "rrr"))
    assert set(results["step_time"]["rrr"]) == {"rrclarc_ms", "rrr_ms", "ratio"}
    assert results["cav_throughput"]["ratio"] > 0
    table = (tmp_path / "rr.md").read_text()
    assert "| patch | 0 | RR-ClArC |" in table and "| patch | 0 | RRR |" in table and "R_bias" in table
    assert "Step time: RRR" in table


def test_rr_clarc_vit_benchmark_quick_mode(tmp_path):
    results = load_benchmark("rr_clarc_vit").main(["--quick", "--output", str(tmp_path / "vit.json")])
    [combination] = results["combinations"]
    rows = combination["per_seed"][0]["rows"]
    assert set(rows) == {"vanilla", "no-shortcut reference", "λ=0 control", "P-ClArC", "A-ClArC", "RR-ClArC", "RRR",
                         "paper recipe (blocks.2 mean, gradient)", "blocks.2 mean, finite difference"}
    assert rows["RR-ClArC"]["penalty_form"] == "finite_difference"  # resolved by the model: the token recipe
    assert rows["paper recipe (blocks.2 mean, gradient)"]["penalty_form"] == "gradient"
    cavs = combination["per_seed"][0]["cavs"]
    assert cavs["token recipe"]["layer"] == "patch_embed" and cavs["token recipe"]["pooling"].startswith("none")
    assert all(0.0 <= row["attacked_accuracy"] <= 1.0 for row in rows.values())
    assert all(value > 0 for value in results["step_time"].values())
    table = (tmp_path / "vit.md").read_text()
    assert "| patch | 0 | RR-ClArC | 1 |" in table and "Step time" in table and "residual AUC" in table


def test_rr_clarc_vit_probes_quick_mode(tmp_path):
    module = load_benchmark("rr_clarc_vit_probes")
    results = module.main(["--quick", "--output", str(tmp_path / "probes.json")])
    assert len(results["rows"]) == 1 + module.QUICK_PROBES and results["rows"][0]["probe"] == "vanilla"
    assert set(results["cavs"]) == {"blocks.2 mean", "blocks.2 spatial", "patch_embed spatial"}
    assert "| P-ClArC | patch_embed spatial |" in (tmp_path / "probes.md").read_text()


def test_rr_clarc_probes_quick_mode(tmp_path):
    results = load_benchmark("rr_clarc_probes").main(["--quick", "--output", str(tmp_path / "probes.json")])
    assert set(results["rows"]) == {"vanilla", "pooled@stages.3 λ=1000", "subspace-4 λ=1000",
                                    "spatial@stages.1 λ=1000", "oracle-head"}
    assert all(0.0 <= row["attacked_accuracy"] <= 1.0 for row in results["rows"].values())
    assert "| spatial@stages.1 λ=1000 |" in (tmp_path / "probes.md").read_text()


def test_speed_benchmarks_quick_modes(tmp_path):
    speed = load_benchmark("end_speed").main(["--quick", "--output", str(tmp_path / "speed.json")])
    for pairing in ("all", "reference"):
        assert speed["penalty"][pairing]["speedup"] > 1.0  # the numbers were checked equal inside
    assert set(speed["training_step"]["seconds"]) == {"vanilla", "end"}
    trainer = load_benchmark("trainer_overhead").main(["--quick", "--output", str(tmp_path / "trainer.json")])
    assert set(trainer["seconds_per_step"]) == {"loop_vanilla", "loop_end", "trainer_end"}
    assert all(value > 0 for value in trainer["seconds_per_step"].values())


def test_cli_train_on_an_image_folder_with_a_bias_csv(tmp_path):
    from PIL import Image

    rows = ["file_name,bias_labels"]
    for label in ("cat", "dog"):
        (tmp_path / "data" / "train" / label).mkdir(parents=True)
        for index in range(4):
            name = f"{label}{index}.png"
            colour = (255, 0, 0) if index % 2 else (0, 0, 255)
            Image.new("RGB", (16, 16), colour).save(tmp_path / "data" / "train" / label / name)
            rows.append(f"{name},{index % 2}")
    (tmp_path / "bias.csv").write_text("\n".join(rows) + "\n")
    code = main(["train", "--model_name_or_path", "simple_convnet", "--dataset", str(tmp_path / "data"),
                 "--bias_csv", str(tmp_path / "bias.csv"), "--output_dir", str(tmp_path / "out"), "--debias", "end",
                 "--max_steps", "1", "--per_device_train_batch_size", "8", "--use_cpu", "true", "--report_to",
                 "none", "--logging_steps", "1", "--disable_tqdm", "true"])
    assert code == 0
    state = json.loads((tmp_path / "out" / "checkpoint-1" / "trainer_state.json").read_text())
    assert "end_r_ortho" in state["log_history"][0]
    (tmp_path / "bias.csv").write_text("file_name,group\ncat0.png,1\n")
    assert main(["train", "--dataset", str(tmp_path / "data"), "--bias_csv", str(tmp_path / "bias.csv"),
                 "--output_dir", str(tmp_path / "out2"), "--debias", "end", "--use_cpu", "true"]) == 2


def test_cli_cav_from_two_folders_and_from_the_builtin_benchmark(tmp_path, capsys, monkeypatch):
    from image_layouts import write_concept_folders

    from hf_debias import CAV

    write_concept_folders(tmp_path)
    assert main(["cav", "simple_convnet", "--layer", "stages.1", "--concept-dir", str(tmp_path / "with"),
                 "--clean-dir", str(tmp_path / "without"), "--concept", "bright corner", "--validation-fraction",
                 "0.25", "--output-dir", str(tmp_path / "cav"), "--no-progress"]) == 0
    cav = CAV.from_pretrained(tmp_path / "cav")
    held_out = cav.quality["held_out_with"] + cav.quality["held_out_without"]
    assert (cav.concept, cav.layer, cav.num_samples + held_out, cav.base_model_name_or_path) == (
        "bright corner", "stages.1", 24, "simple_convnet")
    assert 0 < held_out < 12  # about a quarter of the 24 images
    assert cav.quality["auc"] == 1.0
    import torch
    from hub_cache import FakeHub, offline_cache

    hub = FakeHub(offline_cache(monkeypatch, tmp_path))
    with hub.patch():
        assert main(["cav", "simple_convnet", "--layer", "stages.2", "--dataset", "controlled-artifact",
                     "--only-class", "0", "--max-samples", "300", "--output-dir", str(tmp_path / "patch"),
                     "--no-progress", "--concept", "patch", "--push-to-hub", "org/cavs", "--hub-subfolder",
                     "patch"]) == 0
    assert CAV.from_pretrained(tmp_path / "patch").num_channels == 64
    assert hub.commits[0]["files"] == ["patch/README.md", "patch/cav.safetensors", "patch/cav_config.json"]
    assert torch.equal(CAV.from_pretrained("org/cavs", subfolder="patch").vector,
                       CAV.from_pretrained(tmp_path / "patch").vector)
    assert main(["cav", "simple_convnet", "--dataset", "controlled-artifact", "--concept-dir", "x",
                 "--output-dir", str(tmp_path / "bad")]) == 2
    assert "either --dataset or both" in capsys.readouterr().err


def test_cli_train_rrclarc_on_the_controlled_artifact_benchmark(tmp_path):
    assert main(["cav", "simple_convnet", "--layer", "stages.2", "--dataset", "controlled-artifact", "--only-class",
                 "0", "--max-samples", "200", "--output-dir", str(tmp_path / "cav"), "--no-progress"]) == 0
    assert main(["train", "--model_name_or_path", "simple_convnet", "--dataset", "controlled-artifact",
                 "--max_train_samples", "128", "--max_eval_samples", "64", "--per_device_train_batch_size", "32",
                 "--max_steps", "2", "--output_dir", str(tmp_path / "run"), "--debias", "rrclarc", "--cav",
                 str(tmp_path / "cav"), "--rrclarc_lamb", "10", "--freeze", "before_layer", "--use_cpu",
                 "--report_to", "none", "--disable_tqdm", "true"]) == 0
    metrics = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert {"eval_test_clean_accuracy", "eval_test_attacked_accuracy"} <= set(metrics)
    saved = json.loads((tmp_path / "run" / "debias_config.json").read_text())
    assert saved["debias_method"] == "rrclarc" and saved["layer"] == "stages.2" and saved["cav"] == "cav"


def test_distributed_benchmark_quick_mode(tmp_path, monkeypatch):
    old = __import__("os").environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "benchmarks") + (":" + old if old else ""))  # spawned workers
    results = load_benchmark("end_distributed").main(["--quick", "--output", str(tmp_path / "d.json")])
    assert results["step_time"]["gathered_ms"] > 0 and results["step_time"]["per_process_ms"] > 0
    assert json.loads((tmp_path / "d.json").read_text())["step_time"]["ratio"] == results["step_time"]["ratio"]


def _load_example(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


EXAMPLE_FAST = ["--do_train", "--do_eval", "--max_steps", "2", "--per_device_train_batch_size", "4",
                "--per_device_eval_batch_size", "8", "--use_cpu", "true", "--report_to", "none", "--disable_tqdm",
                "true", "--save_strategy", "no", "--logging_steps", "1"]


def test_run_image_classification_example_with_a_timm_model_and_a_bias_csv(tmp_path):
    import image_layouts as layouts

    folder = layouts.write_class_folders(tmp_path / "data")
    metrics = _load_example("run_image_classification").main([
        "--dataset_name", str(folder), "--bias_csv", str(folder / layouts.BIAS_CSV_NAME), "--model_name_or_path",
        "simple_convnet", "--output_dir", str(tmp_path / "out"), "--debias", "end", *EXAMPLE_FAST])
    validation = sum(layouts.CLASS_FOLDER_COUNTS["val"].values())
    assert sum(metrics[key] for key in metrics if key.endswith("_count") and key.startswith("eval_group_")) == \
        validation  # evaluated on the validation split, every image in one (class, bias) group
    assert 0.0 <= metrics["eval_worst_group_accuracy"] <= metrics["eval_accuracy"] <= 1.0
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and "end_r_ortho" in state["log_history"][0]  # the EnD penalty trained
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["label_names"] == ["bird", "cat", "dog"]
    assert json.loads((tmp_path / "out" / "debias_config.json").read_text())["debias_method"] == "end"


def test_run_image_classification_example_with_a_transformers_model_and_train_dir(tmp_path):
    import image_layouts as layouts
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    model_dir = tmp_path / "tiny-vit"
    ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, num_hidden_layers=1, hidden_size=32,
                                        num_attention_heads=2, intermediate_size=37)).save_pretrained(model_dir)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(model_dir)
    folder = layouts.write_class_folders(tmp_path / "data", bias_csv=False)
    metrics = _load_example("run_image_classification").main([
        "--train_dir", str(folder / "train"), "--validation_dir", str(folder / "test"), "--model_name_or_path",
        str(model_dir), "--output_dir", str(tmp_path / "out"), "--debias", "none", *EXAMPLE_FAST])
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"] == {"0": "bird", "1": "cat", "2": "dog"}
    assert (tmp_path / "out" / "preprocessor_config.json").is_file()  # the image processor is saved with it
