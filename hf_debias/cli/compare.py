"""``hf-debias compare``: the vanilla model and the corrected one, trained on the same data, seed and budget, side
by side.

The flags are those of ``hf-debias train``. The vanilla model is trained first into OUTPUT_DIR/vanilla with
``--debias none`` and every other flag identical (same data, seed, budget, image size; the method's own options
left out), then the corrected one into OUTPUT_DIR/corrected with ``--baseline_results OUTPUT_DIR/vanilla``, so that
its report.json / report.png and model card show both. ``--vanilla_run DIR`` reuses a finished vanilla run
instead (not retrained); one whose recorded data, model, seed or budget differ from this run's is refused. The end
writes OUTPUT_DIR/comparison.json and comparison.md (per eval split: accuracy, worst-group, unbiased and
bias-conflicting accuracy, every (class, bias) group; vanilla, corrected, difference) and prints the table.

    hf-debias compare --dataset colour-digits --debias end --num_train_epochs 3 --output_dir compare
    hf-debias compare --dataset colour-digits --debias end --num_train_epochs 3 --output_dir compare2 \\
        --vanilla_run compare/vanilla
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._parsing import add_train_flags_command, info_logging

USAGE = ("%(prog)s --debias METHOD [--vanilla_run DIR] [--model_name_or_path MODEL] [--dataset DATA] "
         "--output_dir OUT [other options below]")
VANILLA, CORRECTED = "vanilla", "corrected"
RUN_ARGUMENTS = "run_arguments.json"
"""What ``hf-debias compare`` records in each run folder: the model and data arguments, which ``training_args.json``
does not hold, so that a later ``--vanilla_run`` of this folder can be checked in full."""
COMPARED_METRICS = (("accuracy", "accuracy"), ("worst_group_accuracy", "worst group"),
                    ("unbiased_accuracy", "unbiased"), ("bias_conflicting_accuracy", "bias-conflicting"))
TRAINING_FIELDS = (
    "seed", "data_seed", "full_determinism",  # the seed
    "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",  # the budget
    "learning_rate", "weight_decay", "lr_scheduler_type", "warmup_steps", "optim", "max_grad_norm",
    "label_smoothing_factor")
"""``training_args.json`` fields a reused vanilla run must share with this run."""
REPORT_FIELDS = ("train_samples", "eval_samples", "class_names", "bias_column", "bias_names")
"""``report.json`` fields (``hf-debias train``'s) that say which data a run saw."""
PRINTED_GROUPS = 20

logger = logging.getLogger("hf_debias")


def add_parser(subparsers) -> argparse.ArgumentParser:
    return add_train_flags_command(
        subparsers, "compare", main=main,
        help="train the vanilla model and the corrected one on the same data, seed and budget (or reuse a "
             "vanilla run) and compare them group by group (see `hf-debias compare --help`)")


def build_parser():
    """``hf-debias train``'s parser (model, data, debias, Trainer flags) plus ``--vanilla_run``."""
    from .train import extended_parser

    parser, group = extended_parser("hf-debias compare", USAGE, __doc__.replace("``", ""), "compare")
    group.add_argument("--vanilla_run", "--vanilla-run", metavar="DIR", default=None,
                       help="a finished vanilla run's output_dir (with eval_results.json; `hf-debias train "
                            "--debias none` or a previous compare's OUTPUT_DIR/vanilla) to compare with instead "
                            "of training one into OUTPUT_DIR/vanilla; refused when its recorded data, model, seed "
                            "or budget differ")
    return parser


# ---------------------------------------------------------------------------------------------- the two runs
def vanilla_arguments(training_args, output_dir: str | Path):
    """``training_args`` for the vanilla run: ``--debias none``, the method's options at their defaults, its own
    ``output_dir``, no baseline and no push (it is the control, not the model to publish); all else identical."""
    from transformers import TrainingArguments

    from ..training_args import DebiasTrainingArguments

    keep = {"bias_label_column", "bias_description", "card_dataset"}
    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(DebiasTrainingArguments) if f.name not in inherited | keep}
    return dataclasses.replace(training_args, **{**defaults, "debias": "none"}, output_dir=str(output_dir),
                               push_to_hub=False)


def run_compare(model_args, data_args, training_args, vanilla_run: str | None = None) -> dict[str, Any]:
    """Train (or reuse) the vanilla run, train the corrected one against it, write and return the comparison.

    ``training_args`` is not changed: each run gets its own copy."""
    from .train import run_training

    if training_args.debias == "none":
        from ..training_args import DEBIAS_CHOICES

        raise ValueError("--debias none: there is nothing to compare with the vanilla model; choose a correction "
                         f"with --debias ({', '.join(c for c in DEBIAS_CHOICES if c != 'none')}).")
    if training_args.baseline_results is not None:
        raise ValueError(f"--baseline_results {training_args.baseline_results}: compare sets it to the vanilla "
                         "run's eval_results.json; pass an existing vanilla run as --vanilla_run instead.")
    resume = training_args.resume_from_checkpoint
    if resume is not None and str(resume).strip().lower() not in ("", "false", "no", "none", "true", "yes", "last"):
        raise ValueError(f"--resume_from_checkpoint {resume}: compare trains two models, so one checkpoint folder "
                         "cannot resume both; pass 'true' to resume each from its newest checkpoint.")
    output = Path(training_args.output_dir)
    corrected_dir = output / CORRECTED
    if vanilla_run is not None:
        vanilla_dir = Path(vanilla_run)
        if vanilla_dir.resolve() == corrected_dir.resolve():
            raise ValueError(f"--vanilla_run {vanilla_run}: that is this run's corrected folder, which training "
                             "overwrites; pass the vanilla run's folder.")
        check_vanilla_run(vanilla_dir, model_args, data_args, training_args)
    else:
        vanilla_dir = output / VANILLA
        trainer, metrics, data = run_training(model_args, data_args, vanilla_arguments(training_args, vanilla_dir))
        if trainer.is_world_process_zero():
            write_run_arguments(vanilla_dir, model_args, data_args, training_args.bias_label_column)
    corrected_args = dataclasses.replace(training_args, output_dir=str(corrected_dir),
                                         baseline_results=str(vanilla_dir / "eval_results.json"))
    trainer, metrics, data = run_training(model_args, data_args, corrected_args)
    comparison: dict[str, Any] = {}
    if trainer.is_world_process_zero():
        write_run_arguments(corrected_dir, model_args, data_args, training_args.bias_label_column)
        comparison = compare_runs(vanilla_dir, corrected_dir, list(data.evaluation), class_names=data.class_names,
                                  bias_names=data.bias_names, eval_samples={
                                      name: len(split) for name, split in data.evaluation.items()})
        comparison.update(model=model_args.model_name_or_path, dataset=data_args.dataset,
                          debias=training_args.debias, vanilla_trained_here=vanilla_run is None)
        write_comparison(output, comparison)
    return comparison


# ---------------------------------------------------------------------------------------------- the record
def _recorded_path(value: object) -> object:
    """A path that exists, as an absolute path (a run started in another folder names it the same)."""
    return str(Path(value).resolve()) if isinstance(value, str) and value and Path(value).exists() else value


def run_record(model_args, data_args, bias_label_column: str) -> dict[str, dict[str, Any]]:
    """``run_arguments.json``'s content: the model and data arguments (paths made absolute) and the source bias
    column (``training_args.json`` holds the renamed ``bias_labels``)."""
    from ._heatmaps import REPORT_ONLY_FIELDS

    data = {name: _recorded_path(value) for name, value in dataclasses.asdict(data_args).items()
            if name not in REPORT_ONLY_FIELDS}  # the heatmaps change the report, not the model
    return {"model_arguments": dataclasses.asdict(model_args),
            "data_arguments": {**data, "bias_label_column": bias_label_column}}


def write_run_arguments(folder: str | Path, model_args, data_args, bias_label_column: str) -> Path:
    path = Path(folder) / RUN_ARGUMENTS
    path.write_text(json.dumps(run_record(model_args, data_args, bias_label_column), indent=2) + "\n")
    return path


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"--vanilla_run: {path} is not readable JSON: {error}.") from error
    if not isinstance(data, dict):
        raise ValueError(f"--vanilla_run: {path} must hold a JSON object, got {type(data).__name__}.")
    return data


def check_vanilla_run(folder: str | Path, model_args, data_args, training_args) -> None:
    """Refuse a vanilla run that cannot stand for this run's vanilla model: no ``eval_results.json``, trained with
    a correction, or recorded data / model / seed / budget that differ (every differing field named). What the
    folder does not record is not guessed: a warning names it.

    Read: ``training_args.json`` (seed, budget, optimiser, ``--debias``), ``run_arguments.json`` (model and data
    arguments, written by ``hf-debias compare``) and, without it, ``report.json`` (the model, the dataset and the
    sample counts / names of ``hf-debias train``'s report, compared with this run's data, which is loaded for it).
    """
    from ..config import CONFIG_NAME

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--vanilla_run {folder}: no such folder.")
    if not (folder / "eval_results.json").is_file():
        raise FileNotFoundError(f"--vanilla_run {folder}: the folder has no eval_results.json; pass the output_dir "
                                "of a finished `hf-debias train --debias none` run (or of compare's vanilla run).")
    recorded_args = _read_json(folder / "training_args.json")
    record = _read_json(folder / RUN_ARGUMENTS)
    report = _read_json(folder / "report.json")
    method = (recorded_args or {}).get("debias") or (report or {}).get("debias")
    if method not in (None, "none") or (folder / CONFIG_NAME).is_file():
        raise ValueError(f"--vanilla_run {folder}: it was trained with --debias {method or '(a correction)'} "
                         f"({CONFIG_NAME} is there), so it is not a vanilla run; pass a `--debias none` run.")
    differences: list[str] = []
    unchecked: list[str] = []
    if recorded_args is not None:
        current = json.loads(training_args.to_json_string())
        for name in TRAINING_FIELDS:
            if name not in recorded_args:
                unchecked.append(f"--{name}")
            elif recorded_args[name] != current.get(name):
                differences.append(f"--{name}: vanilla run {recorded_args[name]!r}, this run {current.get(name)!r}")
    else:
        unchecked.append("the seed and budget (no training_args.json)")
    if record is not None:
        current = run_record(model_args, data_args, training_args.bias_label_column)
        for section in ("model_arguments", "data_arguments"):
            saved = record.get(section) or {}
            for name, value in current[section].items():
                if name not in saved:
                    unchecked.append(f"--{name}")
                elif saved[name] != value:
                    differences.append(f"--{name}: vanilla run {saved[name]!r}, this run {value!r}")
    elif report is not None:
        differences += _report_differences(report, model_args, data_args, training_args)
        from ._heatmaps import REPORT_ONLY_FIELDS

        checked = {"model_name_or_path", "dataset", "max_train_samples", "max_eval_samples", "eval_split",
                   *REPORT_ONLY_FIELDS}
        unchecked += [f"--{f.name}" for section in (model_args, data_args) for f in dataclasses.fields(section)
                      if f.name not in checked]
    else:
        unchecked.append(f"the model and the data (neither {RUN_ARGUMENTS} nor report.json)")
    if differences:
        raise ValueError(f"--vanilla_run {folder} was not trained like this run: {'; '.join(differences)}. Pass "
                         "the same options (or leave out --vanilla_run to train the vanilla model here).")
    if recorded_args is None and record is None and report is None:
        warnings.warn(f"--vanilla_run {folder} records nothing but eval_results.json (no training_args.json, "
                      f"{RUN_ARGUMENTS} or report.json): its data, model, seed and budget cannot be checked "
                      "against this run's; make sure they match.", stacklevel=2)
    elif unchecked:
        warnings.warn(f"--vanilla_run {folder} does not record {', '.join(unchecked)}: these cannot be checked "
                      "against this run's; make sure they match.", stacklevel=2)


def _report_differences(report: Mapping[str, Any], model_args, data_args, training_args) -> list[str]:
    """``hf-debias train``'s report.json against this run's model name, dataset and loaded data."""
    from .train import load_data

    differences = []
    for key, current in (("model", model_args.model_name_or_path), ("dataset", data_args.dataset)):
        if key in report and _recorded_path(report[key]) != _recorded_path(current):
            differences.append(f"{key}: vanilla run {report[key]!r}, this run {current!r}")
    if not any(key in report for key in REPORT_FIELDS):
        return differences
    data = load_data(data_args, training_args.bias_label_column, seed=training_args.seed)
    current = {"train_samples": len(data.train),
               "eval_samples": {name: len(split) for name, split in data.evaluation.items()},
               "class_names": data.class_names, "bias_column": data.bias_source, "bias_names": data.bias_names}
    for key in REPORT_FIELDS:
        if key in report and report[key] != current[key]:
            differences.append(f"{key}: vanilla run {report[key]!r}, this run {current[key]!r}")
    return differences


# ---------------------------------------------------------------------------------------------- the comparison
def _difference(vanilla: object, corrected: object) -> float | None:
    numbers = [value for value in (vanilla, corrected)
               if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)]
    return corrected - vanilla if len(numbers) == 2 else None  # type: ignore[operator]


def compare_runs(vanilla_dir: str | Path, corrected_dir: str | Path, split_names: Sequence[str], *,
                 class_names: Sequence[str] | None = None, bias_names: Sequence[str] | None = None,
                 eval_samples: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The two runs' ``eval_results.json``, split by split: the summary metrics and every (class, bias) group as
    ``{vanilla, corrected, difference}`` (corrected - vanilla; ``None`` where a side has no number)."""
    from ..metrics.group import groups_from_metrics
    from .train import split_metrics

    vanilla_dir, corrected_dir = Path(vanilla_dir), Path(corrected_dir)
    results = {side: split_metrics(json.loads((folder / "eval_results.json").read_text()), split_names)
               for side, folder in ((VANILLA, vanilla_dir), (CORRECTED, corrected_dir))}
    splits: dict[str, Any] = {}
    for name in split_names:
        vanilla, corrected = results[VANILLA][name], results[CORRECTED][name]
        if not vanilla:
            warnings.warn(f"The vanilla run {vanilla_dir} has no results for the split {name!r}: its column is "
                          "empty.", stacklevel=2)
        metrics = {key: {VANILLA: vanilla.get(key), CORRECTED: corrected.get(key),
                         "difference": _difference(vanilla.get(key), corrected.get(key))}
                   for key, _ in COMPARED_METRICS}
        groups: dict[tuple[int, int], dict[str, Any]] = {}
        for side, values in ((VANILLA, vanilla), (CORRECTED, corrected)):
            for row in groups_from_metrics(values):
                entry = groups.setdefault((row["label"], row["bias"]), {
                    "label": row["label"], "bias": row["bias"], "class_name": _name(class_names, row["label"]),
                    "bias_name": _name(bias_names, row["bias"]), "count": row["count"], "aligned": row["aligned"],
                    VANILLA: None, CORRECTED: None})
                entry[side] = row["accuracy"]
        rows = [{**entry, "difference": _difference(entry[VANILLA], entry[CORRECTED])}
                for _, entry in sorted(groups.items())]
        splits[name] = {"samples": (eval_samples or {}).get(name), "metrics": metrics, "groups": rows}
    return {"vanilla_run": str(vanilla_dir), "corrected_run": str(corrected_dir), "splits": splits}


def _name(names: Sequence[str] | None, index: int) -> str:
    return str(names[index]) if names is not None and 0 <= index < len(names) else str(index)


def _percent(value: object) -> str:
    return f"{100 * value:.1f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def _points(value: object) -> str:
    return f"{100 * value:+.1f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> list[str]:
    """A Markdown table with padded columns, readable as plain text too."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]

    def line(cells):
        return "| " + " | ".join(f"{c:>{w}}" if r else f"{c:<{w}}" for c, w, r in zip(cells, widths, right)) + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if r else "-" * w for w, r in zip(widths, right)) + " |"
    return [line(headers), rule, *(line(row) for row in rows)]


def format_comparison(comparison: Mapping[str, Any], *, max_groups: int | None = None) -> str:
    """The comparison as Markdown: per split, the summary metrics and the groups (all of them, or the
    ``max_groups`` the vanilla model does worst on)."""
    debias = comparison.get("debias", "corrected")
    how = "trained here" if comparison.get("vanilla_trained_here", True) else "reused"
    lines = [f"# {comparison.get('model', 'model')}: vanilla vs {debias} on {comparison.get('dataset', 'the data')}",
             "", f"Vanilla: {comparison['vanilla_run']} ({how}); corrected: {comparison['corrected_run']} "
                 f"(--debias {debias}). Accuracies in %, difference in points (corrected - vanilla)."]
    for name, split in comparison["splits"].items():
        samples = f" ({split['samples']} images)" if split.get("samples") is not None else ""
        lines += ["", f"## {name}{samples}", ""]
        lines += _table(("metric", VANILLA, CORRECTED, "difference"),
                        [(label, _percent(split["metrics"][key][VANILLA]), _percent(split["metrics"][key][CORRECTED]),
                          _points(split["metrics"][key]["difference"])) for key, label in COMPARED_METRICS],
                        (False, True, True, True))
        groups = split["groups"]
        if not groups:
            lines += ["", "No bias labels, so no group rows."]
            continue
        shown = groups
        if max_groups is not None and len(groups) > max_groups:
            worst = sorted(groups, key=lambda g: (g[VANILLA] if g[VANILLA] is not None else math.inf,
                                                  g["label"], g["bias"]))[:max_groups]
            shown = sorted(worst, key=lambda g: (g["label"], g["bias"]))
        lines.append("")
        lines += _table(("class", "bias", "count", "group", VANILLA, CORRECTED, "difference"),
                        [(g["class_name"], g["bias_name"], str(g["count"]),
                          {True: "aligned", False: "conflicting"}.get(g["aligned"], "-"), _percent(g[VANILLA]),
                          _percent(g[CORRECTED]), _points(g["difference"])) for g in shown],
                        (False, False, True, False, True, True, True))
        if len(shown) < len(groups):
            lines.append(f"(the {len(shown)} groups the vanilla model does worst on, of {len(groups)}; all of them "
                         "are in comparison.md)")
    return "\n".join(lines)


def write_comparison(output_dir: str | Path, comparison: Mapping[str, Any]) -> tuple[Path, Path]:
    """``comparison.json`` (numbers as the runs' eval_results.json hold them; NaN as null) and ``comparison.md``."""
    from ..report import _json_safe

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output / "comparison.json", output / "comparison.md"
    json_path.write_text(json.dumps(_json_safe(dict(comparison)), indent=2) + "\n")
    md_path.write_text(format_comparison(comparison) + "\n")
    return json_path, md_path


def main(argv: Sequence[str] | None = None) -> int:
    model_args, data_args, training_args, options = build_parser().parse_args_into_dataclasses(
        args=list(argv) if argv is not None else sys.argv[1:])
    with info_logging():
        comparison = run_compare(model_args, data_args, training_args, options.vanilla_run)
        if comparison:
            output = Path(training_args.output_dir)
            print("\n" + format_comparison(comparison, max_groups=PRINTED_GROUPS))
            print(f"\nComparison: {output / 'comparison.json'} and {output / 'comparison.md'}; the corrected "
                  f"model's report and card (both columns): {output / CORRECTED}")
    return 0
