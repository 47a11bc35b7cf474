"""``hf-debias sweep``: search the debias options (alpha, beta, lambda, the layer...) with the Trainer's own
``hyperparameter_search`` (optuna on this machine, Ray Tune for a cluster).

The model, data and training flags are those of ``hf-debias train``; each trial trains a fresh model on the train
split with its values and is scored on the validation split (``--eval_split``, default ``validation``; test splits
are refused: choose on validation, then report the test split once with ``hf-debias train``). Without
``--search_space`` the method's default space is searched: EnD alpha in [0.01, 50] and beta in [0.01, 10],
RR-ClArC lambda in [0.1, 1e5], all log-uniform. The end writes trials.json, trials.csv (one row per trial) and
best_run.json into --output_dir; the trials' checkpoints, if any, go to --output_dir/run-N.

    hf-debias sweep --dataset colour-digits --debias end --num_train_epochs 3 --n_trials 20 --output_dir sweep

A search space file names DebiasTrainingArguments fields:

    {"end_alpha": {"type": "float", "low": 0.1, "high": 30, "log": true},
     "debias_layer": {"type": "categorical", "choices": ["stages.2", "head.fc:input"]}}
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._parsing import add_train_flags_command, info_logging

if TYPE_CHECKING:  # the command's parser is built without importing torch / transformers
    from ..sweep import SweepResult

USAGE = ("%(prog)s [--model_name_or_path MODEL] [--dataset DATA] --debias METHOD [--n_trials N] "
         "[--backend {optuna,ray}] [--search_space FILE] --output_dir OUT [other options below]")
OBJECTIVES = ("worst_group_accuracy", "unbiased_accuracy", "bias_conflicting_accuracy", "accuracy", "loss")

logger = logging.getLogger("hf_debias")


def add_parser(subparsers) -> argparse.ArgumentParser:
    return add_train_flags_command(
        subparsers, "sweep", main=main,
        help="search the debias options with Trainer.hyperparameter_search (optuna / Ray Tune) on the validation "
             "split (see `hf-debias sweep --help`)")


def build_parser():
    """``hf-debias train``'s parser (model, data, debias, Trainer flags) plus the sweep's own flags."""
    from .train import extended_parser

    parser, group = extended_parser("hf-debias sweep", USAGE, __doc__.replace("``", ""), "sweep")
    group.add_argument("--n_trials", "--n-trials", type=int, default=10, help="number of trials")
    group.add_argument("--backend", choices=["optuna", "ray"], default="optuna",
                       help="optuna (trials one after another here) or ray (Ray Tune; a cluster if one is running)")
    group.add_argument("--search_space", "--search-space", metavar="FILE", default=None,
                       help="JSON search space {option: {type, low, high, log} or {type: categorical, choices}}; "
                            "default: the method's (EnD: end_alpha, end_beta; RR-ClArC: rrclarc_lamb; RRR: "
                            "rrr_lamb)")
    group.add_argument("--objective", choices=OBJECTIVES, default="worst_group_accuracy",
                       help="the validation metric the search maximises (loss: minimises), on the first "
                            "--eval_split")
    return parser


def run_sweep_command(model_args, data_args, training_args, options: argparse.Namespace) -> SweepResult:
    """Load the data once, run the sweep (a fresh model per trial), write and return its result."""
    from pathlib import Path

    from ..sweep import (SweepObjective, check_backend, check_search_space, default_search_space,
                         read_search_space, run_sweep)
    from ..trainer import DebiasTrainer
    from .train import BIAS_COLUMN, batch_functions, build_model_and_transforms, load_data, mask_column_of

    if options.n_trials < 1:
        raise ValueError(f"--n_trials must be at least 1, got {options.n_trials}.")
    check_backend(options.backend)
    if data_args.eval_split is None:
        data_args.eval_split = "validation"
    _refuse_test_splits(name.strip() for name in data_args.eval_split.split(","))
    if options.search_space and not Path(options.search_space).is_file():
        raise FileNotFoundError(f"--search_space {options.search_space}: no such file.")
    # the search space checked against this run's options before any data is loaded
    space = read_search_space(options.search_space, training_args) if options.search_space else \
        check_search_space(default_search_space(training_args.debias), training_args)
    mask_column = mask_column_of(training_args)
    data = load_data(data_args, training_args.bias_label_column, seed=training_args.seed, mask_column=mask_column)
    evaluation = data.evaluation
    _refuse_test_splits(evaluation)  # the names the loader gave them
    _, processor, train_transform, eval_transform = build_model_and_transforms(model_args, data_args, data)
    to_train, to_eval, collate = batch_functions(train_transform, eval_transform, mask_column)
    objective = SweepObjective(options.objective, split=next(iter(evaluation)) if len(evaluation) > 1 else None)

    def model_init():
        return build_model_and_transforms(model_args, data_args, data)[0]

    training_args.bias_label_column = BIAS_COLUMN  # --bias_label_column named the source column; this is ours
    training_args.remove_unused_columns = False  # the transform produces exactly the columns the model needs
    if training_args.card_dataset is None:
        training_args.card_dataset = data_args.dataset
    trainer = DebiasTrainer(model_init=model_init, args=training_args, train_dataset=data.train,
                            eval_dataset=next(iter(evaluation.values())) if len(evaluation) == 1 else evaluation,
                            data_collator=collate, processing_class=processor)
    data.train.set_transform(to_train)
    for split in evaluation.values():
        split.set_transform(to_eval)
    backend_options = {}
    if options.backend == "ray":  # Ray Tune's results next to the sweep's, not in ~/ray_results
        backend_options = {"storage_path": str(Path(training_args.output_dir).resolve() / "ray_results"),
                           "name": "hf-debias-sweep"}
    result = run_sweep(trainer, space, n_trials=options.n_trials, backend=options.backend, objective=objective,
                       **backend_options)
    result.write(training_args.output_dir)
    return result


def _refuse_test_splits(names) -> None:
    from ..sweep import is_test_split

    tests = [name for name in names if is_test_split(name)]
    if tests:
        raise ValueError(f"--eval_split {tests[0]}: a sweep never evaluates on a test split (the hyper-parameters "
                         "would be chosen on it). Evaluate on a validation split, then run `hf-debias train` with "
                         "the best run's options and the test split once.")


def summarise(result: SweepResult, output_dir: str) -> str:
    """Print one line per trial (objective and values) and the best run; returns the text printed."""
    params = list(result.search_space)
    width = max(len(str(trial["trial"])) for trial in result.trials) if result.trials else 5
    header = f"{'trial':<{max(width, 5)}}  {'objective':>9}  " + "  ".join(f"{name:>12}" for name in params)
    lines = [f"\nSweep ({result.backend}): {len(result.trials)} trials, objective {result.metric} "
             f"({result.direction})", "", header, "-" * len(header)]
    for trial in result.trials:
        value = trial["objective"]
        shown = f"{value:9.4f}" if isinstance(value, (int, float)) else f"{trial['state']:>9}"
        lines.append(f"{str(trial['trial']):<{max(width, 5)}}  {shown}  " + "  ".join(
            f"{_short(trial['params'].get(name)):>12}" for name in params))
    best = result.best
    lines += ["", f"Best: trial {best.get('trial')}, {result.metric} = {best.get('objective')}, "
                  + ", ".join(f"--{name} {value}" for name, value in best.get("params", {}).items()),
              f"Written: {output_dir}/trials.json, trials.csv, best_run.json"]
    text = "\n".join(lines)
    print(text)
    return text


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main(argv: Sequence[str] | None = None) -> int:
    model_args, data_args, training_args, options = build_parser().parse_args_into_dataclasses(
        args=list(argv) if argv is not None else sys.argv[1:])
    with info_logging():
        result = run_sweep_command(model_args, data_args, training_args, options)
        if training_args.process_index == 0:
            summarise(result, training_args.output_dir)
    return 0
