"""Hyper-parameter sweeps of the debias options through the Trainer's own ``hyperparameter_search``.

Optuna searches on one machine and Ray Tune spreads trials over a cluster; hf_debias adds no scheduler of its own.
Trainer sets each trial's values on ``trainer.args`` and ``DebiasTrainer`` builds that trial's model (``model_init``)
with the correction those arguments describe, so ``end_alpha``, ``end_beta``, ``rrclarc_lamb``, ``debias_layer``
and every ``TrainingArguments`` field are searchable alike.

A search space is a JSON object, one entry per ``DebiasTrainingArguments`` field::

    {"end_alpha": {"type": "float", "low": 0.01, "high": 50, "log": true},
     "debias_layer": {"type": "categorical", "choices": ["stages.2", "head.fc:input"]},
     "num_train_epochs": {"type": "int", "low": 1, "high": 5}}

The objective is a **validation** metric, by default the worst-group accuracy (``unbiased_accuracy`` on request);
an objective on a test split is refused: hyper-parameters chosen on the test set make its numbers meaningless.

    trainer = DebiasTrainer(model_init=..., args=DebiasTrainingArguments(..., debias="end"), ...)
    result = run_sweep(trainer, n_trials=20)          # DEFAULT_SEARCH_SPACES["end"], validation worst group
    result.write(trainer.args.output_dir)             # trials.json, trials.csv, best_run.json
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import difflib
import importlib.util
import json
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainingArguments

from ._validation import check_choice
from .metrics.group import is_group_structure_key, parse_group_key
from .training_args import DebiasTrainingArguments, debias_flags

BACKENDS = ("optuna", "ray")
PARAM_TYPES = ("float", "int", "categorical")

DEFAULT_SEARCH_SPACES: dict[str, dict[str, dict[str, Any]]] = {
    # The paper searched alpha, beta in [0, 1] (up to 50 at rho = 0.999); our Colour-Digits runs picked alpha from
    # 0.1 to 30 depending on the training length (BENCHMARKS.md section 1b), and alpha, beta >= 10 together
    # under-fit: a wide log range for alpha, a narrower one for beta.
    "end": {"end_alpha": {"type": "float", "low": 0.01, "high": 50.0, "log": True},
            "end_beta": {"type": "float", "low": 0.01, "high": 10.0, "log": True}},
    # The paper swept lambda log-wise from 0.05 to 1e7; validation picked 1,000 among 100 / 1,000 / 10,000 on the
    # controlled artifact (BENCHMARKS.md section 4).
    "rrclarc": {"rrclarc_lamb": {"type": "float", "low": 0.1, "high": 1e5, "log": True}},
    # The RR-ClArC authors swept RRR's lambda from 0.05 to 1e7; the squared input gradient is small per pixel.
    "rrr": {"rrr_lamb": {"type": "float", "low": 0.1, "high": 1e5, "log": True}},
}
"""The default search space of each method that has a numeric hyper-parameter (``hf-debias sweep`` without
``--search_space``)."""

NOT_SEARCHABLE = ("debias", "output_dir")
"""Fields a trial may not change: the method (one sweep per method) and where the runs are written."""

_SPEC_KEYS = {"float": {"type", "low", "high", "log"}, "int": {"type", "low", "high", "log"},
              "categorical": {"type", "choices"}}


def default_search_space(method: str) -> dict[str, dict[str, Any]]:
    """A copy of ``DEFAULT_SEARCH_SPACES[method]``; ``ValueError`` for a method without one."""
    if method not in DEFAULT_SEARCH_SPACES:
        example = '{"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": true}}'
        if method != "none":
            example = '{"debias_layer": {"type": "categorical", "choices": [...]}} or ' + example
        raise ValueError(f"--debias {method} has no default search space (the defaults cover "
                         f"{', '.join(DEFAULT_SEARCH_SPACES)}); pass one naming the options to search, e.g. "
                         f"{example}.")
    return copy.deepcopy(DEFAULT_SEARCH_SPACES[method])


def read_search_space(path: str | Path, args: TrainingArguments | None = None) -> dict[str, dict[str, Any]]:
    """A search space from a JSON file, checked by ``check_search_space`` (against ``args`` when given); errors
    name the file."""
    from .config import read_json_object

    space = read_json_object(path, "search space")
    try:
        return check_search_space(space, args)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def searchable_names(args: TrainingArguments | None = None) -> list[str]:
    """The options a search space may name: with ``DebiasTrainingArguments`` the options of its ``--debias``
    method and every ``TrainingArguments`` field; without ``args`` every ``DebiasTrainingArguments`` field."""
    trainer_fields = [f.name for f in dataclasses.fields(TrainingArguments) if f.init]
    if isinstance(args, DebiasTrainingArguments):
        own = debias_flags(args.debias)
    elif args is None:
        own = [f.name for f in dataclasses.fields(DebiasTrainingArguments) if f.init and f.name not in trainer_fields]
    else:
        own = []
    return [name for name in dict.fromkeys([*own, *trainer_fields]) if name not in NOT_SEARCHABLE]


def check_search_space(space: Mapping[str, Any], args: TrainingArguments | None = None,
                       ) -> dict[str, dict[str, Any]]:
    """``space`` checked and normalised (``log`` filled in): every name an option of ``args`` (see
    ``searchable_names``), every entry a well-formed range or list of choices, and with ``args`` every bound and
    choice of a debias option accepted by the method's config. Errors name the option and list the valid ones."""
    if not isinstance(space, Mapping) or not space:
        raise ValueError(f"The search space must be a non-empty JSON object {{option: {{\"type\": ...}}}}, got "
                         f"{json.dumps(space, default=str)[:80]}.")
    valid = searchable_names(args)
    method = getattr(args, "debias", None)
    out = {}
    for name, spec in space.items():
        if name not in valid:
            raise ValueError(_unknown_option_message(name, valid, method))
        out[name] = _checked_spec(name, spec)
    if isinstance(args, DebiasTrainingArguments):
        _check_values_build_a_config(out, args)
    return out


def _unknown_option_message(name: str, valid: list[str], method: str | None) -> str:
    if name in NOT_SEARCHABLE:
        why = "the method is fixed for a sweep (run one sweep per method)" if name == "debias" else \
            "every trial writes under the one output_dir"
        return f"The search space names {name!r}, which a trial may not change: {why}."
    debias = [n for n in valid if n not in {f.name for f in dataclasses.fields(TrainingArguments)}]
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    owner = f"--debias {method}" if method else "hf_debias"
    return (f"The search space names {name!r}, which is not an option of {owner}.{hint} Searchable: "
            f"{', '.join(debias) or '(no debias option)'}, and any TrainingArguments field (learning_rate, "
            "num_train_epochs, per_device_train_batch_size, weight_decay, warmup_steps, ...).")


def _checked_spec(name: str, spec: Any) -> dict[str, Any]:
    where = f"search space {name!r}"
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where} must be an object with a \"type\" ({', '.join(PARAM_TYPES)}), got "
                         f"{json.dumps(spec, default=str)[:80]}.")
    kind = check_choice(f"{where}: type", spec.get("type"), PARAM_TYPES)
    unknown = sorted(set(spec) - _SPEC_KEYS[kind])
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} for type {kind!r}; its keys are "
                         f"{sorted(_SPEC_KEYS[kind])}.")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"{where}: choices must be a non-empty list, got {choices!r}.")
        for choice in choices:
            if choice is None or not isinstance(choice, (str, int, float, bool)):
                # Trainer casts a trial's value to the type of the previous value (str(None) == "None").
                raise ValueError(f"{where}: each choice must be a string, number or boolean, got {choice!r}; "
                                 "null cannot be searched (Trainer casts each value to the previous trial's type).")
        return {"type": kind, "choices": list(choices)}
    low, high, log = spec.get("low"), spec.get("high"), spec.get("log", False)
    number = int if kind == "int" else (int, float)
    for bound, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, number) or not math.isfinite(value):
            raise ValueError(f"{where}: {bound} must be a finite {'integer' if kind == 'int' else 'number'}, got "
                             f"{value!r}.")
    if not isinstance(log, bool):
        raise ValueError(f"{where}: log must be true or false, got {log!r}.")
    if not low < high:
        raise ValueError(f"{where}: low must be below high, got low={low!r}, high={high!r}.")
    if log and low <= 0:
        raise ValueError(f"{where}: a log range needs low > 0, got low={low!r}.")
    return {"type": kind, "low": low, "high": high, "log": log}


def _check_values_build_a_config(space: dict[str, dict[str, Any]], args: DebiasTrainingArguments) -> None:
    """Every bound and choice of a debias option set on a copy of ``args`` must give a valid config (alpha >= 0,
    a known pairing...): found now, not after trials have trained."""
    debias_options = set(debias_flags(args.debias))
    for name, spec in space.items():
        if name not in debias_options:
            continue
        for value in spec["choices"] if spec["type"] == "categorical" else (spec["low"], spec["high"]):
            trial = copy.copy(args)
            setattr(trial, name, value)
            try:
                trial.debias_config()
            except (ValueError, TypeError) as error:
                raise ValueError(f"search space {name!r}: the value {value!r} is not valid: {error}") from error


# ---------------------------------------------------------------------------------------------- backends
def optuna_hp_space(space: Mapping[str, Any]) -> Callable[[Any], dict[str, Any]]:
    """``hp_space`` for ``hyperparameter_search(backend="optuna")``: the trial's ``suggest_*`` of each entry."""
    space = check_search_space(space)

    def hp_space(trial) -> dict[str, Any]:
        values = {}
        for name, spec in space.items():
            if spec["type"] == "categorical":
                values[name] = trial.suggest_categorical(name, spec["choices"])
            elif spec["type"] == "int":
                values[name] = trial.suggest_int(name, spec["low"], spec["high"], log=spec["log"])
            else:
                values[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec["log"])
        return values

    return hp_space


def ray_hp_space(space: Mapping[str, Any]) -> Callable[[Any], dict[str, Any]]:
    """``hp_space`` for ``hyperparameter_search(backend="ray")``: Ray Tune's sampling domains (``int`` ranges
    include ``high``, as in optuna)."""
    space = check_search_space(space)

    def hp_space(trial=None) -> dict[str, Any]:
        from ray import tune

        domains = {}
        for name, spec in space.items():
            if spec["type"] == "categorical":
                domains[name] = tune.choice(spec["choices"])
            elif spec["type"] == "int":
                domains[name] = (tune.lograndint if spec["log"] else tune.randint)(spec["low"], spec["high"] + 1)
            else:
                domains[name] = (tune.loguniform if spec["log"] else tune.uniform)(spec["low"], spec["high"])
        return domains

    return hp_space


def hp_space_for(space: Mapping[str, Any], backend: str) -> Callable[[Any], dict[str, Any]]:
    """The ``hp_space`` callable of ``space`` for ``backend`` (``optuna`` or ``ray``)."""
    check_choice("backend", backend, BACKENDS)
    return optuna_hp_space(space) if backend == "optuna" else ray_hp_space(space)


# ---------------------------------------------------------------------------------------------- objective
MINIMIZED_METRICS = ("loss", "bias_gap")
GROUP_METRICS_NEEDING_BIAS = ("unbiased_accuracy", "worst_group_accuracy")
ALIGNED_METRICS = ("bias_aligned_accuracy", "bias_conflicting_accuracy", "bias_gap")


def is_test_split(name: str) -> bool:
    """True for a split or metric key with a part named ``test*`` (``test``, ``test_unbiased``,
    ``eval_test_clean_accuracy``): a sweep never selects on it."""
    return any(part.lower().startswith("test") for part in str(name).split("_"))


@dataclass(frozen=True)
class SweepObjective:
    """``compute_objective`` for ``hyperparameter_search``: one evaluation metric, ``eval_[<split>_]<metric>``.

    Args:
        metric: ``worst_group_accuracy`` (default), ``unbiased_accuracy``, ``accuracy``, ``loss``,
            ``bias_conflicting_accuracy``... (``DebiasTrainer``'s metric names), or a full ``eval_...`` key.
        split: the eval set's name when ``eval_dataset`` is a dict of several; ``None`` for a single eval set.

    A metric or split named ``test*`` is refused: select on a validation split, report on the test split once.
    """

    metric: str = "worst_group_accuracy"
    split: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not self.metric.strip():
            raise ValueError(f"objective metric must be a metric name such as 'worst_group_accuracy', got "
                             f"{self.metric!r}.")
        for what, name in (("split", self.split), ("metric", self.metric)):
            if name is not None and is_test_split(name):
                raise ValueError(f"The sweep objective's {what} {name!r} is a test split: hyper-parameters must "
                                 "be chosen on a validation split, and the test split evaluated once at the end. "
                                 "Evaluate on a validation split (--eval_split validation).")

    @property
    def key(self) -> str:
        """The metrics key the objective reads (``eval_worst_group_accuracy``, ``eval_val_unbiased_accuracy``)."""
        if self.metric.startswith("eval_"):
            return self.metric
        return f"eval_{self.split}_{self.metric}" if self.split else f"eval_{self.metric}"

    @property
    def direction(self) -> str:
        """``minimize`` for a loss or the bias gap, ``maximize`` for an accuracy."""
        return "minimize" if self.key.endswith(MINIMIZED_METRICS) else "maximize"

    def __call__(self, metrics: Mapping[str, float]) -> float:
        if self.key not in metrics:
            available = sorted(key for key, value in metrics.items() if key.startswith("eval_")
                               and isinstance(value, (int, float)) and parse_group_key(key) is None)
            raise ValueError(f"The sweep objective {self.key!r} is not among the evaluation metrics; they are "
                             f"{', '.join(available) or 'none'}.")
        return float(metrics[self.key])


def check_objective(objective: SweepObjective, trainer) -> None:
    """Before any trial trains: ``trainer`` evaluates on a non-test split whose metrics include the objective's.
    A dict of eval sets needs ``objective.split``; one eval set needs none."""
    evaluation = trainer.eval_dataset
    if evaluation is None:
        raise ValueError("The sweep needs an eval_dataset (a validation split): the objective is measured on it.")
    if isinstance(evaluation, Mapping):
        if objective.split is None and not objective.metric.startswith("eval_"):
            raise ValueError(f"eval_dataset has several sets ({', '.join(evaluation)}); pass "
                             "SweepObjective(split=NAME) to choose the one the objective is measured on.")
        if objective.split is not None and objective.split not in evaluation:
            raise ValueError(f"objective split {objective.split!r} is not an eval set; they are "
                             f"{', '.join(evaluation)}.")
        dataset = evaluation.get(objective.split)  # a split or key named test* is refused by SweepObjective
    else:
        if objective.split is not None:
            raise ValueError(f"objective split {objective.split!r} given, but eval_dataset is a single dataset "
                             "(its metrics are eval_<metric>); drop the split or pass a dict of eval sets.")
        dataset = evaluation
    split = getattr(dataset, "split", None)
    if split is not None and is_test_split(str(split)):
        raise ValueError(f"The sweep's eval dataset is the {str(split)!r} split (datasets.Dataset.split): "
                         "hyper-parameters must be chosen on a validation split, never a test split.")
    if trainer.compute_metrics == getattr(trainer, "group_metrics", None) and dataset is not None:
        _check_default_metric(objective, dataset, trainer)


def _check_default_metric(objective: SweepObjective, dataset, trainer) -> None:
    """The objective's metric is one that ``DebiasTrainer.group_metrics`` computes on this eval set."""
    columns = getattr(dataset, "column_names", None)
    if columns is None or objective.metric.startswith("eval_"):
        return
    metric = objective.metric
    valid = ["loss", "accuracy"]
    if trainer.bias_label_column in columns:
        valid += list(GROUP_METRICS_NEEDING_BIAS)
        if trainer.aligned_bias is not None:
            valid += list(ALIGNED_METRICS)
    group = parse_group_key(metric, "")
    if metric in valid or (group is not None and group[2] == "accuracy" and len(valid) > 2):
        return
    why = ""
    if metric in (*GROUP_METRICS_NEEDING_BIAS, *ALIGNED_METRICS) and trainer.bias_label_column not in columns:
        why = f" (the eval set has no bias column {trainer.bias_label_column!r})"
    raise ValueError(f"The sweep objective {metric!r} is not among the metrics evaluation produces here{why}; "
                     f"choose one of: {', '.join(valid)}.")


# ---------------------------------------------------------------------------------------------- the sweep
class _TrialMetrics(TrainerCallback):
    """The last evaluation's metrics of each trial, by trial name (optuna runs its trials in this process)."""

    def __init__(self) -> None:
        self.by_trial: dict[str, dict[str, float]] = {}

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.trial_name is not None and metrics:
            self.by_trial[state.trial_name] = _model_metrics(metrics)


def _model_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The ``eval_*`` numbers that measure the model: not group ids and sizes, not timings."""
    return {key: value for key, value in metrics.items() if key.startswith("eval_")
            and isinstance(value, (int, float)) and not isinstance(value, bool)
            and not is_group_structure_key(key) and not key.endswith(_TIMINGS)}


_TIMINGS = ("_runtime", "_samples_per_second", "_steps_per_second", "_model_preparation_time")


@dataclass
class SweepResult:
    """A finished sweep: every trial (``trial``, ``state``, ``params``, ``objective``, ``metrics``) and the best
    (``trial``, ``objective``, ``params``); ``metric`` is the objective's key."""

    backend: str
    metric: str
    direction: str
    search_space: dict[str, dict[str, Any]]
    trials: list[dict[str, Any]]
    best: dict[str, Any] = field(default_factory=dict)

    def write(self, output_dir: str | Path) -> list[Path]:
        """Write ``trials.json`` (everything), ``trials.csv`` (one row per trial: trial, state, objective, the
        parameters) and ``best_run.json`` into ``output_dir``; returns the three paths."""
        folder = Path(output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        summary = {"backend": self.backend, "metric": self.metric, "direction": self.direction,
                   "search_space": self.search_space, "best_run": self.best, "trials": self.trials}
        paths = [folder / "trials.json", folder / "trials.csv", folder / "best_run.json"]
        paths[0].write_text(json.dumps(summary, indent=2, default=_json_value) + "\n")
        params = list(self.search_space)
        with paths[1].open("w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["trial", "state", f"objective ({self.metric})", *params])
            for trial in self.trials:
                writer.writerow([trial["trial"], trial["state"], _csv_value(trial["objective"]),
                                 *(_csv_value(trial["params"].get(name)) for name in params)])
        best = {"backend": self.backend, "metric": self.metric, "direction": self.direction, **self.best}
        paths[2].write_text(json.dumps(best, indent=2, default=_json_value) + "\n")
        return paths


def _json_value(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


def _csv_value(value: Any) -> Any:
    return "" if value is None else value


def check_backend(backend: str) -> None:
    """``backend`` is ``optuna`` or ``ray`` and installed; the error says which extra installs it."""
    check_choice("backend", backend, BACKENDS)
    if importlib.util.find_spec(backend) is None:
        extra = "sweep" if backend == "optuna" else "ray"
        raise ImportError(f"backend={backend!r} needs {backend} installed: pip install 'hf-debias[{extra}]'.")


def run_sweep(trainer, search_space: Mapping[str, Any] | None = None, *, n_trials: int = 10,
              backend: str = "optuna", objective: SweepObjective | None = None, **kwargs) -> SweepResult:
    """Run ``trainer.hyperparameter_search`` over ``search_space`` (default: the method's
    ``DEFAULT_SEARCH_SPACES`` entry) and return every trial and the best.

    ``trainer`` needs ``model_init`` and an eval set. ``objective`` defaults to ``SweepObjective()`` (the eval
    set's worst-group accuracy); its direction is the search's. ``kwargs`` go to the backend: optuna's
    ``create_study`` (a ``TPESampler`` seeded with ``args.seed`` unless ``sampler`` is given; an in-memory
    ``storage`` unless given) or Ray Tune's ``tune.run`` (``resources_per_trial``, ``storage_path``...).
    Everything is checked before the first trial: the option names, the values, the objective's split. The
    arguments are left as they were (Trainer would leave the last trial's values on them)."""
    check_backend(backend)
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials must be an integer >= 1, got {n_trials!r}.")
    if getattr(trainer, "model_init", None) is None:
        raise ValueError("run_sweep needs a trainer built with model_init=...: every trial trains a fresh model.")
    args = trainer.args
    if search_space is None:
        search_space = default_search_space(getattr(args, "debias", "none"))
    space = check_search_space(search_space, args)
    objective = objective if objective is not None else SweepObjective()
    check_objective(objective, trainer)
    recorder = _TrialMetrics()
    trainer.add_callback(recorder)
    before = {name: getattr(args, name) for name in space}  # Trainer leaves the last trial's values on args
    try:
        if backend == "optuna":
            best, trials = _run_optuna(trainer, space, n_trials, objective, recorder, kwargs)
        else:
            best, trials = _run_ray(trainer, space, n_trials, objective, kwargs)
    finally:
        trainer.remove_callback(recorder)
        for name, value in before.items():
            setattr(args, name, value)
    return SweepResult(backend=backend, metric=objective.key, direction=objective.direction,
                       search_space=space, trials=trials,
                       best={"trial": best.run_id, "objective": best.objective,
                             "params": {name: best.hyperparameters[name] for name in space
                                        if name in best.hyperparameters}})


def _run_optuna(trainer, space, n_trials, objective, recorder, kwargs):
    import optuna

    kwargs = dict(kwargs)
    kwargs.setdefault("sampler", optuna.samplers.TPESampler(seed=trainer.args.seed))
    storage = kwargs.setdefault("storage", optuna.storages.InMemoryStorage())
    study_name = kwargs.setdefault("study_name", f"hf-debias-{uuid.uuid4().hex[:8]}")
    best = trainer.hyperparameter_search(
        hp_space=optuna_hp_space(space), compute_objective=objective, n_trials=n_trials,
        direction=objective.direction, backend="optuna", hp_name=_optuna_trial_name, **kwargs)
    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = [{"trial": trial.number, "state": trial.state.name.lower(), "params": dict(trial.params),
               "objective": trial.value, "metrics": recorder.by_trial.get(_optuna_trial_name(trial), {})}
              for trial in study.trials]
    return best, trials


def _optuna_trial_name(trial) -> str:
    return f"run-{trial.number}"  # Trainer's own name for a trial's folder


def _run_ray(trainer, space, n_trials, objective, kwargs):
    best = trainer.hyperparameter_search(
        hp_space=ray_hp_space(space), compute_objective=objective, n_trials=n_trials,
        direction=objective.direction, backend="ray", **kwargs)
    trials = []
    for trial in best.run_summary.trials:
        result = trial.last_result or {}
        trials.append({"trial": trial.trial_id, "state": str(trial.status).lower(),
                       "params": {name: trial.config[name] for name in space if name in trial.config},
                       "objective": result.get("objective"),
                       "metrics": _model_metrics(result)})
    return best, trials
