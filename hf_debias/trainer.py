"""``DebiasTrainer`` and ``DebiasTrainingArguments``: bias correction in ``transformers.Trainer`` with one flag.

``DebiasTrainingArguments`` adds ``--debias {none,end}`` and the method's options to ``TrainingArguments``, so
``HfArgumentParser`` turns them into flags of any script that already uses it. ``DebiasTrainer`` wraps the
model with ``get_debias_model`` and computes the loss in ``compute_loss``; everything else is Trainer's own.

The penalty is added in training only; the evaluation loss is plain cross-entropy. EnD's Gram matrix is built
per micro-batch: with gradient accumulation the penalty sees ``per_device_train_batch_size`` samples at a time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import EvalPrediction, Trainer, TrainingArguments

from .config import DebiasConfig, _CONFIG_CLASSES, available_methods
from .freezing import FREEZE_POLICIES
from .functional.end import PAIRINGS
from .functional.rr_clarc import AGGREGATIONS, GRADIENT_TARGETS
from .loading import unwrap_model
from .methods.base import method_class_for
from .metrics.group import group_accuracy, infer_aligned_bias
from .model import DebiasModel, get_debias_model, logits_of

DEBIAS_CHOICES = ("none", *available_methods())


@dataclass
class DebiasTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the debias options. Method options are named ``<method>_<config field>``
    (``end_alpha`` -> ``EnDConfig.alpha``); options several methods share carry no prefix (``cav``, ``freeze``).
    A new method adds its fields here and nothing else changes."""

    debias: str = field(default="none", metadata={"help": "bias correction method", "choices": list(DEBIAS_CHOICES)})
    debias_layer: str | None = field(default=None, metadata={
        "help": "bottleneck module name (see `hf-debias layers MODEL`); 'NAME:input' for a module's input; "
                "default: the input of the classifier head"})
    bias_label_column: str = field(default="bias_labels", metadata={
        "help": "dataset column with one integer bias id per sample"})
    end_alpha: float = field(default=1.0, metadata={"help": "EnD: weight of the disentangling term (>= 0)"})
    end_beta: float = field(default=1.0, metadata={"help": "EnD: weight of the entangling term (>= 0)"})
    end_pairing: str = field(default="all", metadata={
        "help": "EnD: 'all' pairs (the paper) or 'reference' (the official code's subset)", "choices": list(PAIRINGS)})
    end_normalize_forward: bool = field(default=True, metadata={
        "help": "EnD: L2-normalise the bottleneck in the forward pass (the paper's network)"})
    end_global_batch: bool = field(default=True, metadata={
        "help": "EnD: under multi-process training compute the penalty on the batch gathered from every process "
                "(False: a per-process penalty)"})
    cav: str | None = field(default=None, metadata={
        "help": "rrclarc / pclarc / aclarc: the bias CAV, a folder or a Hub repo id (see `hf-debias cav`)"})
    allow_cav_mismatch: bool = field(default=False, metadata={
        "help": "use a CAV recorded for another layer or base model (warns instead of refusing)"})
    freeze: str = field(default="conv_norm", metadata={
        "help": "rrclarc / aclarc: what stays frozen: conv_norm (the paper: convolutions and norms), before_layer "
                "(everything up to the layer), none", "choices": list(FREEZE_POLICIES)})
    rrclarc_lamb: float = field(default=1.0, metadata={"help": "RR-ClArC: penalty weight lambda (>= 0)"})
    rrclarc_gradient_target: str = field(default="random_signs", metadata={
        "help": "RR-ClArC: what is differentiated", "choices": list(GRADIENT_TARGETS)})
    rrclarc_target_class: int | None = field(default=None, metadata={
        "help": "RR-ClArC: the class for --rrclarc_gradient_target class"})
    rrclarc_aggregation: str = field(default="l2_mean", metadata={
        "help": "RR-ClArC: how the latent gradient's projection is aggregated (l2_mean: the paper)",
        "choices": list(AGGREGATIONS)})
    bias_description: str | None = field(default=None, metadata={
        "help": "model card: the bias that is corrected, in words (e.g. 'background colour')"})
    baseline_results: str | None = field(default=None, metadata={
        "help": "model card: an uncorrected run's eval results (its output_dir, eval_results.json, or "
                "{split: {metric: value}} JSON), shown as 'before'"})
    card_dataset: str | None = field(default=None, metadata={
        "help": "model card: the dataset the metrics were measured on (a Hub id or a name)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.debias not in DEBIAS_CHOICES:
            raise ValueError(f"debias={self.debias!r} is not valid; choose one of: {', '.join(DEBIAS_CHOICES)}.")
        self.debias_config()  # validate the method's options now, at parse time
        if self.baseline_results is not None:
            _baseline_file(self.baseline_results)  # not at the first checkpoint save

    def debias_config(self) -> DebiasConfig | None:
        """The config that ``--debias`` and its options describe, or ``None`` for ``--debias none``."""
        if self.debias == "none":
            return None
        config_class = _CONFIG_CLASSES[self.debias]
        base_fields = {f.name for f in dataclasses.fields(DebiasConfig)}
        values = {}
        for config_field in dataclasses.fields(config_class):
            if not config_field.init or config_field.name in base_fields:
                continue
            for flag in (f"{self.debias}_{config_field.name}", config_field.name):
                if flag in _OWN_FIELDS:
                    values[config_field.name] = getattr(self, flag)
                    break
        return config_class(layer=self.debias_layer, **values)


_OWN_FIELDS = {f.name for f in dataclasses.fields(DebiasTrainingArguments)} - {
    f.name for f in dataclasses.fields(TrainingArguments)}


class DebiasTrainer(Trainer):
    """A ``Trainer`` whose training loss adds the correction penalty and whose default metrics are group metrics.

    Args:
        debias_config: overrides the config built from ``args`` (``DebiasTrainingArguments``).
        Everything else is passed to ``Trainer`` unchanged.
    """

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean: Trainer divides it for accumulation

    def __init__(self, model=None, args: TrainingArguments | None = None, *trainer_args,
                 debias_config: DebiasConfig | None = None, **trainer_kwargs):
        if args is None:
            args = DebiasTrainingArguments(output_dir="tmp_trainer")
        config = debias_config if debias_config is not None else (
            args.debias_config() if isinstance(args, DebiasTrainingArguments) else None)
        if config is not None and model is not None and not isinstance(model, DebiasModel):
            model = get_debias_model(model, config)
        self.bias_label_column = getattr(args, "bias_label_column", "bias_labels")
        train_dataset = trainer_kwargs.get("train_dataset")
        if args.label_names is None:  # keeps the bias column through remove_unused_columns, for every model
            columns = getattr(train_dataset, "column_names", None)
            has_bias = columns is None or self.bias_label_column in columns or (
                config is not None and method_class_for(config).needs_bias_labels)
            # Only when the data has it: Trainer skips compute_metrics for batches without every label name.
            args.label_names = ["labels", self.bias_label_column] if has_bias else ["labels"]
        if config is not None:
            _check_training_data(train_dataset, self.bias_label_column, args, config)
        self.aligned_bias = _aligned_bias_of(train_dataset, self.bias_label_column)
        if trainer_kwargs.get("compute_metrics") is None:
            trainer_kwargs["compute_metrics"] = self.group_metrics
        super().__init__(model, args, *trainer_args, **trainer_kwargs)
        self.model_accepts_loss_kwargs = False  # transformers < 5.19 reads this instead of loss_is_scaled_for_ga
        self._loss_part_sums: dict[str, torch.Tensor] = {}
        self._loss_part_count = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        bias_labels = inputs.pop(self.bias_label_column, None)
        if "pixel_values" not in inputs:
            raise ValueError(f"The batch has no 'pixel_values'; it has {sorted(inputs)}. Map the images to "
                             "'pixel_values' in the data collator or transform.")
        if isinstance(unwrap_model(model, through_debias=False), DebiasModel):
            outputs = model(inputs["pixel_values"], labels=labels, bias_labels=bias_labels)
            loss = outputs.loss
            if outputs.penalty_terms is not None:
                self._add_loss_parts(ce_loss=outputs.ce_loss, penalty=outputs.penalty, **outputs.penalty_terms)
            outputs = {"loss": loss, "logits": outputs.logits}
        else:
            logits = logits_of(model(inputs["pixel_values"]))
            loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
            outputs = {"loss": loss, "logits": logits}
        return (loss, outputs) if return_outputs else loss

    def _add_loss_parts(self, **parts: torch.Tensor) -> None:
        """Sum the parts on their device: reading them every step would make the host wait for the GPU."""
        for key, value in parts.items():
            value = value.detach().float()
            self._loss_part_sums[key] = value if key not in self._loss_part_sums else self._loss_part_sums[key] + value
        self._loss_part_count += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Trainer's log, plus the mean loss parts (``ce_loss``, ``penalty``, ``end_r_ortho``...) since the
        last training log. A non-finite part raises: Trainer's NaN filter would otherwise hide it."""
        if "loss" in logs and self._loss_part_count:
            for key, total in self._loss_part_sums.items():
                mean = float(total) / self._loss_part_count
                if not math.isfinite(mean):
                    raise ValueError(
                        f"The loss part {key!r} became {mean} in the {self._loss_part_count} steps before step "
                        f"{self.state.global_step}: the model's features or logits hold NaN or infinite values "
                        f"(try a lower learning rate, or bf16 instead of fp16).")
                logs[key] = round(mean, 6)
            self._loss_part_sums, self._loss_part_count = {}, 0
        super().log(logs, start_time)

    def group_metrics(self, prediction: EvalPrediction) -> dict[str, float]:
        """Default ``compute_metrics``: accuracy, and with bias labels the group metrics (worst-group, unbiased,
        bias-aligned / conflicting accuracy, the gap). Aligned groups are inferred from the training set."""
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        label_ids = prediction.label_ids
        labels, bias_labels = (label_ids[0], label_ids[1]) if isinstance(label_ids, (tuple, list)) else (label_ids, None)
        predictions = np.asarray(logits).argmax(axis=-1)
        if bias_labels is None:
            return {"accuracy": float((predictions == np.asarray(labels)).mean())}
        result = group_accuracy(predictions, labels, bias_labels, aligned_bias=self.aligned_bias)
        # Numbers only (the "y=..,b=.." dicts and the worst group's name are in the flat group_* keys)
        return {key: value for key, value in result.items() if isinstance(value, (int, float))}

    # ------------------------------------------------------------------ saving, loading, pushing
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Save the model as ``hf_debias.hub.save_model`` does (the classifier in its library's format,
        ``debias_config.json``, the CAV, the card) and the arguments as ``training_args.json``: no pickle.

        Under DeepSpeed / FSDP (a gathered ``state_dict``) or for a model neither timm nor transformers,
        Trainer's own layout is kept, plus ``debias_config.json``."""
        from .hub import save_model
        from .hub.native import native_format

        output_dir = Path(output_dir or self.args.output_dir)
        model = unwrap_model(self.model, through_debias=False)
        inner = model.model if isinstance(model, DebiasModel) else model
        try:
            native_format(inner)
            native = state_dict is None
        except ValueError:
            native = False
        if native:
            save_model(model, output_dir, card=self.model_card_info(), repo_id=self.args.hub_model_id)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
        else:
            super()._save(str(output_dir), state_dict)
            if isinstance(model, DebiasModel):
                model.debias_config.save_pretrained(output_dir)
        (output_dir / TRAINING_ARGS_JSON).write_text(self.args.to_json_string())
        (output_dir / "training_args.bin").unlink(missing_ok=True)

    def _load_native_checkpoint(self, folder: str | None, model=None) -> bool:
        """Load weights saved by ``_save`` (native layout) into the live model; False if ``folder`` is not one."""
        from .hub.native import CONFIG_NAME, load_native

        if folder is None or self.is_deepspeed_enabled or self.is_fsdp_enabled \
                or not (Path(folder) / CONFIG_NAME).is_file():
            return False
        target = unwrap_model(model if model is not None else self.model, through_debias=False)
        inner = target.model if isinstance(target, DebiasModel) else target
        inner.load_state_dict(load_native(folder).state_dict(), strict=True)
        return True

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if not self._load_native_checkpoint(resume_from_checkpoint, model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        if not self._load_native_checkpoint(self.state.best_model_checkpoint):
            super()._load_best_model()

    def latest_eval_metrics(self) -> dict[str, dict[str, float]]:
        """The last evaluation's metrics as ``{split: {metric: value}}`` (``eval`` for a single eval set)."""
        latest: dict[str, float] = {}
        for entry in self.state.log_history:
            latest.update(entry)
        return metrics_by_split(latest, self._eval_split_names())

    def _eval_split_names(self) -> list[str]:
        return list(self.eval_dataset) if isinstance(self.eval_dataset, dict) else []

    def model_card_info(self):
        """What the model card shows: the latest eval metrics, the bias description and the baseline run's
        metrics from the arguments (``--bias_description``, ``--baseline_results``)."""
        from .hub import ModelCardInfo

        args = self.args
        return ModelCardInfo(bias=getattr(args, "bias_description", None),
                             dataset=getattr(args, "card_dataset", None), metrics=self.latest_eval_metrics(),
                             baseline_metrics=_read_baseline(getattr(args, "baseline_results", None),
                                                             self._eval_split_names()))

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """No intermediate pushes: hf_debias pushes the final model once, in one commit (``push_to_hub``)."""

    def push_to_hub(self, commit_message: str = "End of training", blocking: bool = True, token: str | None = None,
                    revision: str | None = None, private: bool | None = None, *, card=None, **kwargs):
        """Push the trained model: saved locally first (into a staging folder, never ``output_dir``'s
        checkpoints or pickles), then one commit to ``args.hub_model_id`` (default: the output folder's name)
        with the card. ``card`` (a ``ModelCardInfo``) replaces the one built from the run."""
        from .hub import push_model

        if kwargs:
            raise ValueError(f"Unknown push_to_hub options {sorted(kwargs)}; the card comes from card=ModelCardInfo(...).")
        if not self.is_world_process_zero():
            return None
        repo_id = self.args.hub_model_id or Path(self.args.output_dir).resolve().name
        return push_model(unwrap_model(self.model, through_debias=False), repo_id,
                          card=card if card is not None else self.model_card_info(), commit_message=commit_message,
                          token=token or self.args.hub_token, revision=revision,
                          private=private if private is not None else self.args.hub_private_repo)


TRAINING_ARGS_JSON = "training_args.json"
_NOT_METRICS = {"loss", "runtime", "samples_per_second", "steps_per_second", "epoch", "model_preparation_time"}


def _read_baseline(path: str | None, split_names: list[str]) -> dict[str, dict[str, float]]:
    """A baseline run's metrics: ``{split: {metric: value}}`` JSON, or Trainer's flat ``eval_results.json``."""
    if not path:
        return {}
    data = json.loads(_baseline_file(path).read_text())
    if data and all(isinstance(value, dict) for value in data.values()):
        return data
    return metrics_by_split(data, split_names)


def _baseline_file(path: str) -> Path:
    file = Path(path)
    if file.is_dir():
        file = file / "eval_results.json"
    if not file.is_file():
        raise ValueError(f"baseline_results {path!r} is neither a JSON file nor a run folder with eval_results.json.")
    return file


def metrics_by_split(flat: dict, split_names: list[str]) -> dict[str, dict[str, float]]:
    """Trainer's flat ``eval_<split>_<metric>`` (or ``eval_<metric>``) numbers as ``{split: {metric: value}}``."""
    metrics: dict[str, dict[str, float]] = {}
    for key, value in flat.items():
        if not key.startswith("eval_") or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        rest = key[len("eval_"):]
        split = next((name for name in split_names if rest.startswith(name + "_")), "eval")
        metric = rest[len(split) + 1:] if split != "eval" else rest
        if metric not in _NOT_METRICS:
            metrics.setdefault(split, {})[metric] = float(value)
    return metrics


def _check_training_data(dataset, bias_column: str, args: TrainingArguments, config: DebiasConfig) -> None:
    """Fail early on a missing bias column; warn where the penalty would silently have nothing to work on."""
    needs_bias = method_class_for(config).needs_bias_labels
    names = getattr(dataset, "column_names", None)
    if needs_bias and names is not None:
        if bias_column not in names:
            raise ValueError(f"--debias {config.debias_method} needs a bias label per sample, but the training "
                             f"dataset has no column {bias_column!r}; its columns are {names}. Pass "
                             "--bias_label_column NAME.")
        values = set(dataset.unique(bias_column)) if hasattr(dataset, "unique") else set(dataset[bias_column])
        if len(values) < 2:
            warnings.warn(f"The bias column {bias_column!r} has a single value ({sorted(values)}): there is no "
                          f"bias to remove, and {config.debias_method}'s entangling term has no pairs.", stacklevel=3)
    if needs_bias and args.per_device_train_batch_size < 2:
        warnings.warn(f"per_device_train_batch_size={args.per_device_train_batch_size}: {config.debias_method}'s "
                      "penalty compares samples within a batch and has no pairs at batch size 1, so it is always 0.",
                      stacklevel=3)


def _aligned_bias_of(dataset, bias_column: str) -> dict[int, int] | None:
    """The bias value each label co-occurs with most in ``dataset`` (None without both columns)."""
    names = getattr(dataset, "column_names", None) or []
    if "labels" not in names or bias_column not in names:
        return None
    return infer_aligned_bias(dataset["labels"], dataset[bias_column])
