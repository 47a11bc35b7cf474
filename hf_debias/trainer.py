"""``DebiasTrainer``: bias correction in ``transformers.Trainer`` with one flag.

Its arguments are ``DebiasTrainingArguments`` (``hf_debias.training_args``, importable without ``Trainer``;
re-exported here): ``TrainingArguments`` plus ``--debias`` and the method's options. ``DebiasTrainer`` wraps the
model with ``get_debias_model`` and computes the loss in ``compute_loss``; everything else is Trainer's own.

The penalty is added in training only; the evaluation loss is the task loss alone. The task loss is what plain
``Trainer`` would use: cross-entropy, label-smoothed with ``label_smoothing_factor``, or ``compute_loss_func``'s.
EnD's Gram matrix is built per micro-batch: with gradient accumulation the penalty sees
``per_device_train_batch_size`` samples at a time. Every model ``Trainer`` builds through ``model_init`` (each
``hyperparameter_search`` trial) gets the correction the current arguments describe.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import math
import re
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import EvalPrediction, Trainer, TrainingArguments
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.trainer_pt_utils import LabelSmoother

from ._validation import check_batch_size
from .config import CONFIG_NAME, DebiasConfig
from .loading import unwrap_model
from .methods.base import method_class_for
from .metrics.group import group_accuracy, infer_aligned_bias, is_group_structure_key, parse_group_key
from .model import DebiasModel, get_debias_model, logits_of
from .training_args import PSEUDO_LABEL_COLUMN, DebiasTrainingArguments, _baseline_data

logger = logging.getLogger(__name__)

class DebiasTrainer(Trainer):
    """A ``Trainer`` whose training loss adds the correction penalty and whose default metrics are group metrics.

    The Trainer's own options keep their meaning: the task loss is cross-entropy, label-smoothed with
    ``label_smoothing_factor``, or ``compute_loss_func(outputs, labels, num_items_in_batch=...)`` (``outputs`` has
    ``.logits``), and the penalty is added to it; every model ``model_init`` builds gets the correction of the
    arguments at that moment (a trial's ``end_alpha``...). ``pixel_values``, ``labels`` and the bias column are
    kept through ``remove_unused_columns`` for any model. Labels of any integer dtype are made int64.
    Evaluation works with or without the bias column (accuracy and loss; group metrics where it exists).

    Args:
        debias_config: overrides the config built from ``args`` (``DebiasTrainingArguments``), for every model.
        Everything else is passed to ``Trainer`` unchanged.
    """

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean: Trainer divides it for accumulation

    def __init__(self, model=None, args: TrainingArguments | None = None, *trainer_args,
                 debias_config: DebiasConfig | None = None, **trainer_kwargs):
        if args is None:
            args = DebiasTrainingArguments(output_dir="tmp_trainer")
        self._fixed_debias_config = debias_config
        self.bias_label_column = getattr(args, "bias_label_column", "bias_labels")
        train_dataset = trainer_kwargs.get("train_dataset")
        # --bias_label_column auto: pseudo labels are computed in train(), from the model's initial weights.
        self._pseudo_labels_pending = self.bias_label_column == PSEUDO_LABEL_COLUMN
        self.pseudo_labels = None
        if self._pseudo_labels_pending:
            self.bias_label_column = PSEUDO_BIAS_COLUMN
            _check_no_bias_column(train_dataset)
            self._pseudo_label_source = None if model is None else copy.deepcopy(model)
        _check_label_columns(train_dataset, ("labels", self.bias_label_column), "training")
        eval_dataset = trainer_kwargs.get("eval_dataset")
        for split, dataset in (eval_dataset.items() if isinstance(eval_dataset, dict) else [(None, eval_dataset)]):
            _check_label_columns(dataset, ("labels", self.bias_label_column),
                                 "evaluation" if split is None else f"evaluation ({split!r})")
        config = self._debias_config_for(args)
        self.mask_column = mask_column_of(config)
        if config is not None:
            _check_training_data(train_dataset, self.bias_label_column, args, config,
                                 pseudo=self._pseudo_labels_pending)
        if model is not None:
            model = self._attach_correction(model, config, announce=False)
        self.aligned_bias = _aligned_bias_of(train_dataset, self.bias_label_column)
        if trainer_kwargs.get("compute_metrics") is None:
            trainer_kwargs["compute_metrics"] = self.group_metrics
        # Trainer reads model.config.problem_type for label smoothing, which timm models lack: built below instead.
        smoothing = args.label_smoothing_factor
        args.label_smoothing_factor = 0.0
        try:
            super().__init__(model, args, *trainer_args, **trainer_kwargs)
        finally:
            args.label_smoothing_factor = smoothing
        self.label_smoother = self._label_smoother(smoothing)
        if self.label_smoother is not None and self.compute_loss_func is not None:
            warnings.warn(f"label_smoothing_factor={smoothing} is not used: compute_loss_func replaces the "
                          "cross-entropy (smooth the labels inside it).", UserWarning, stacklevel=2)
        if args.label_names is None:
            # The bias column is a label wherever it exists: kept through remove_unused_columns and given to
            # compute_metrics. prediction_step uses the label names each eval batch has.
            self.label_names = ["labels", self.bias_label_column]
        self.model_accepts_loss_kwargs = False  # transformers < 5.19 reads this instead of loss_is_scaled_for_ga
        if self.compute_loss_func is not None:
            # Trainer's rule: compute_loss_func normalises by num_items_in_batch (the whole accumulated batch), so
            # the loss is already scaled for accumulation; compute_loss scales the per-batch penalty itself.
            self.loss_is_scaled_for_ga = True
        self._loss_part_sums: dict[str, torch.Tensor] = {}
        self._loss_part_count = 0
        self._check_best_metric()

    def _check_best_metric(self) -> None:
        """A ``metric_for_best_model`` that the default metrics never produce for these eval sets is an error now;
        Trainer would only find out at the first evaluation, after training to it."""
        name = self.args.metric_for_best_model
        if not name or self.compute_metrics != self.group_metrics or self.eval_dataset is None:
            return
        key = name[len("eval_"):] if name.startswith("eval_") else name
        evaluation = self.eval_dataset.items() if isinstance(self.eval_dataset, dict) else [("", self.eval_dataset)]
        valid = []
        for split, dataset in evaluation:
            columns = getattr(dataset, "column_names", None)
            if columns is None:
                return  # an iterable or custom dataset: its columns are not known before evaluating
            metrics = ["loss", "accuracy"]
            if self.bias_label_column in columns:
                metrics += ["unbiased_accuracy", "worst_group_accuracy"]
                if self.aligned_bias is not None:
                    metrics += ["bias_aligned_accuracy", "bias_conflicting_accuracy", "bias_gap"]
            valid += [f"{split}_{metric}" if split else metric for metric in metrics]
        prefixes = [f"{split}_" for split, _ in evaluation if split] or [""]
        parsed = [parse_group_key(key, prefix) for prefix in prefixes]
        per_group = any(group is not None and group[2] == "accuracy" for group in parsed)
        if key in valid or per_group or key.split("_", 1)[-1] in _NOT_METRICS - {"loss"}:
            return
        raise ValueError(f"metric_for_best_model={name!r} is not among the metrics evaluation produces here; "
                         f"choose one of: {', '.join(valid)} (or a per-group group_<label>_<bias>_accuracy).")

    # ------------------------------------------------------------------ the model and its correction
    def _debias_config_for(self, args: TrainingArguments) -> DebiasConfig | None:
        if self._fixed_debias_config is not None:
            return self._fixed_debias_config
        if isinstance(args, DebiasTrainingArguments):
            args.check_debias_options()  # again: a search trial may have set any field
            return args.debias_config()
        return None

    def _attach_correction(self, model, config: DebiasConfig | None, *, announce: bool):
        if config is not None and not isinstance(unwrap_model(model, through_debias=False), DebiasModel):
            model = get_debias_model(model, config)
        if announce:
            attached = unwrap_model(model, through_debias=False)
            if isinstance(attached, DebiasModel):
                hyper = {key: value for key, value in attached.debias_config.to_dict().items()
                         if key not in _RECORD_ONLY and key not in ("debias_method", "cav")}
                logger.info("model_init built %s; attached correction %s %s", type(attached.model).__name__,
                            attached.debias_config.debias_method, json.dumps(hyper, sort_keys=True, default=str))
            else:
                logger.info("model_init built %s; no correction attached (--debias none)", type(model).__name__)
        return model

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """Trainer's ``train``; with ``--bias_label_column auto`` the pseudo bias labels are computed first."""
        if self._pseudo_labels_pending:
            self._attach_pseudo_labels(reuse=bool(resume_from_checkpoint))
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _attach_pseudo_labels(self, *, reuse: bool) -> None:
        """Pseudo bias labels of the training set (``hf_debias.pseudo_bias_labels`` with the ``pseudo_*``
        options), saved in ``output_dir/pseudo_bias_labels/`` and added to every training item. On resume the
        saved labels are reused when they match this run's options and training set size. Every process computes
        the same labels (same seed, same data)."""
        from .pseudo_labels import PseudoLabels, pseudo_bias_labels

        config = self.args.pseudo_label_config()
        config.device = str(self.args.device)
        folder = Path(self.args.output_dir) / PSEUDO_LABELS_FOLDER
        result = None
        if reuse and (folder / "pseudo_labels.json").is_file():
            saved = PseudoLabels.from_pretrained(folder)
            if saved.config == config and saved.labels.shape[0] == len(self.train_dataset):
                result = saved
                logger.info("Reusing the pseudo bias labels in %s.", folder)
        if result is None:
            source = self._pseudo_label_source
            if source is None:
                if self.model_init is None:
                    raise ValueError("--bias_label_column auto needs the model (or model_init) to train the biased "
                                     "auxiliary copy from.")
                takes_trial = len(inspect.signature(self.model_init).parameters) > 0
                source = (lambda: self.model_init(None)) if takes_trial else self.model_init  # noqa: E731
            result = pseudo_bias_labels(source, self.train_dataset, None, config, progress=not self.args.disable_tqdm)
            if self.args.should_save:
                result.save_pretrained(folder)
        self.pseudo_labels = result
        self.train_dataset = WithBiasLabels(self.train_dataset, result.labels, self.bias_label_column)
        self._pseudo_label_source = None  # the copy is no longer needed
        self._pseudo_labels_pending = False

    def call_model_init(self, trial=None):
        """Trainer's ``model_init`` call, plus the correction described by the arguments of this trial."""
        if trial is not None and getattr(self, "hp_search_backend", None) is not None:
            self._hp_search_setup(trial)  # Trainer applies the trial only after building the model
        model = super().call_model_init(trial)
        config = self._debias_config_for(self.args)
        self.mask_column = mask_column_of(config)
        if config is not None and getattr(self, "train_dataset", None) is not None:  # None inside __init__
            _check_training_data(self.train_dataset, self.bias_label_column, self.args, config)
        return self._attach_correction(model, config, announce=True)

    def hyperparameter_search(self, hp_space=None, compute_objective=None, n_trials: int = 20,
                              direction: str | list[str] | None = None, *args, **kwargs):
        """Trainer's search. Without ``compute_objective`` the objective is ``hf_debias.sweep.SweepObjective()``,
        the eval set's worst-group accuracy, maximised, checked before any trial trains (Trainer's own default,
        the sum of every metric minimised, would minimise accuracy); a test split is refused. Pass
        ``compute_objective=SweepObjective("accuracy")`` (for example) where the eval set has no bias column."""
        from .sweep import SweepObjective, check_objective

        if compute_objective is None:
            compute_objective = SweepObjective()
            check_objective(compute_objective, self)
            direction = direction if direction is not None else compute_objective.direction
        return super().hyperparameter_search(hp_space, compute_objective, n_trials,
                                             direction if direction is not None else "minimize", *args, **kwargs)

    def _label_smoother(self, epsilon: float) -> LabelSmoother | None:
        if not epsilon:
            return None
        config = getattr(unwrap_model(self.model, through_debias=True), "config", None) if self.model else None
        if getattr(config, "problem_type", None) == "multi_label_classification":
            warnings.warn("Label smoothing is not compatible with multi-label classification; "
                          "label_smoothing_factor is not used in this run.", UserWarning, stacklevel=3)
            return None
        return LabelSmoother(epsilon=epsilon)

    def _set_signature_columns_if_needed(self) -> None:
        """Keep ``pixel_values``, ``labels``, the bias column and the correction's mask column (RRR) through
        ``remove_unused_columns``, whatever the model's ``forward`` is called with (a timm model's ``forward(x)``)."""
        super()._set_signature_columns_if_needed()
        for column in ("pixel_values", "labels", self.bias_label_column, *filter(None, [self.mask_column])):
            if column not in self._signature_columns:
                self._signature_columns.append(column)

    # ------------------------------------------------------------------ batches and the loss
    def _prepare_inputs(self, inputs):
        """Trainer's device placement, then labels and bias labels as int64 (once, before the loss and before
        any gather across processes), and a clear error for an empty batch."""
        return self._checked_batch(super()._prepare_inputs(inputs))

    def _checked_batch(self, inputs):
        """``inputs`` with a clear error for an empty batch and the label columns as int64. Trainer's steps get it
        through ``_prepare_inputs``; ``compute_loss`` applies it too, for a batch passed to it directly."""
        pixel_values = inputs.get("pixel_values")
        if isinstance(pixel_values, torch.Tensor) and pixel_values.dim() > 0:
            check_batch_size("pixel_values", pixel_values.shape[0])
        for column in dict.fromkeys(("labels", self.bias_label_column)):
            value = inputs.get(column)
            if isinstance(value, torch.Tensor):
                inputs[column] = _class_ids_of_column(column, value)
        return inputs

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Trainer's step with the label names this batch has: an eval set without the bias column still gives
        a loss and accuracy (Trainer would skip both when one label name is missing)."""
        names = self.label_names
        present = [name for name in names if inputs.get(name) is not None]
        self.label_names = present if "labels" in present else []
        try:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        finally:
            self.label_names = names

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        if "pixel_values" not in inputs:
            others = sorted(key for key in inputs if key not in ("labels", self.bias_label_column))
            raise ValueError(f"The batch has no 'pixel_values'; it has {others}. Map the images to "
                             "'pixel_values' in the data collator or transform.")
        inputs = self._checked_batch(inputs)
        labels = inputs.pop("labels", None)
        bias_labels = inputs.pop(self.bias_label_column, None)
        masks = inputs.pop(self.mask_column, None) if self.mask_column else None  # RRR's per-image masks
        pixel_values = inputs["pixel_values"]
        ce_loss = penalty = None
        if isinstance(unwrap_model(model, through_debias=False), DebiasModel):
            outputs = model(pixel_values, labels=labels, bias_labels=bias_labels, masks=masks)
            logits, ce_loss, penalty = outputs.logits, outputs.ce_loss, outputs.penalty
            if outputs.penalty_terms is not None:
                self._add_loss_parts(ce_loss=outputs.ce_loss, penalty=outputs.penalty, **outputs.penalty_terms)
        else:
            logits = logits_of(model(pixel_values))
        loss = None
        if labels is not None:
            loss = self._task_loss(logits, labels, ce_loss, num_items_in_batch, training=model.training)
            if penalty is not None:
                loss = loss + (penalty / self._accumulation_steps() if self.loss_is_scaled_for_ga else penalty)
        outputs = {"loss": loss, "logits": logits}
        return (loss, outputs) if return_outputs else loss

    def _task_loss(self, logits: torch.Tensor, labels: torch.Tensor, ce_loss: torch.Tensor | None,
                   num_items_in_batch, *, training: bool) -> torch.Tensor:
        """The loss plain ``Trainer`` would compute: ``compute_loss_func``'s, the label-smoothed one, or
        cross-entropy (already computed by the wrapper when it is given)."""
        if self.compute_loss_func is not None:
            loss = self.compute_loss_func(ImageClassifierOutput(logits=logits), labels,
                                          num_items_in_batch=num_items_in_batch)
            if num_items_in_batch is None:
                # not normalised over the accumulated batch: a per-batch mean, scaled here as Trainer would
                return loss / self._accumulation_steps() if training else loss
            if self.args.average_tokens_across_devices:  # as Trainer: num_items_in_batch counts every process
                loss = loss * (self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1
                               else self.args.n_gpu)
            return loss
        if self.label_smoother is not None:
            return self.label_smoother({"logits": logits.float()}, labels)
        return ce_loss if ce_loss is not None else F.cross_entropy(logits.float(), labels)

    def _accumulation_steps(self) -> int:
        if not self.model.training:
            return 1
        return getattr(self, "current_gradient_accumulation_steps", None) or self.args.gradient_accumulation_steps

    def _add_loss_parts(self, **parts: torch.Tensor) -> None:
        """Sum the parts on their device: reading them every step would make the host wait for the GPU."""
        for key, value in parts.items():
            value = value.detach().float()
            self._loss_part_sums[key] = value if key not in self._loss_part_sums else self._loss_part_sums[key] + value
        self._loss_part_count += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Trainer's log, plus the mean loss parts (``ce_loss``, ``penalty``, ``end_r_ortho``...) since the
        last training log, at full precision (a small penalty never shows as 0). A non-finite part raises:
        Trainer's NaN filter would otherwise hide it."""
        if "loss" in logs and self._loss_part_count:
            for key, total in self._loss_part_sums.items():
                mean = float(total) / self._loss_part_count
                if not math.isfinite(mean):
                    raise ValueError(
                        f"The loss part {key!r} became {mean} in the {self._loss_part_count} steps before step "
                        f"{self.state.global_step}: the model's features or logits hold NaN or infinite values "
                        f"(try a lower learning rate, or bf16 instead of fp16).")
                logs[key] = mean
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
            save_model(model, output_dir, card=self.model_card_info(), repo_id=self.args.hub_model_id,
                       image_processor=self.processing_class)  # part of the atomic save
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
        self._check_resume_config(resume_from_checkpoint, model)
        if not self._load_native_checkpoint(resume_from_checkpoint, model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _check_resume_config(self, checkpoint: str, model=None) -> None:
        """Refuse to resume with another correction than the checkpoint's (method, any hyper-parameter, the CAV's
        content); ``--allow_debias_config_change`` turns the refusal into a logged warning."""
        target = unwrap_model(model if model is not None else self.model, through_debias=False)
        current = target.debias_config if isinstance(target, DebiasModel) else None
        differences = debias_config_differences(_checkpoint_debias_config(checkpoint), current)
        if not differences:
            return
        message = (f"Resuming from {str(checkpoint)!r}, whose {CONFIG_NAME} differs from this run's debias options: "
                   f"{'; '.join(differences)}. Resuming continues the checkpoint's run: pass the same options, or "
                   f"--allow_debias_config_change to continue with this run's on the checkpoint's weights.")
        if not getattr(self.args, "allow_debias_config_change", False):
            raise ValueError(message)
        logger.warning("%s (allowed by --allow_debias_config_change)", message)

    def _load_best_model(self) -> None:
        if not self._load_native_checkpoint(self.state.best_model_checkpoint):
            super()._load_best_model()

    eval_split_name: str = "eval"
    """What the card calls a single eval dataset (one not given as a dict of named splits); ``hf-debias train``
    sets the split's name."""

    def latest_eval_metrics(self) -> dict[str, dict[str, float]]:
        """The last evaluation's metrics as ``{split: {metric: value}}`` (``eval_split_name`` for a single eval
        set), with each group's size and alignment flag (``group_*_count`` / ``_aligned``) for the card's table."""
        latest: dict[str, float] = {}
        for entry in self.state.log_history:
            latest.update(entry)
        metrics = metrics_by_split(latest, self._eval_split_names(), group_structure=True)
        if "eval" in metrics and self.eval_split_name != "eval" and not self._eval_split_names():
            metrics[self.eval_split_name] = metrics.pop("eval")
        return metrics

    def baseline_metrics(self) -> dict[str, dict[str, float]]:
        """``--baseline_results`` by split, its single split named as this run's (``eval_split_name``)."""
        baseline = _read_baseline(getattr(self.args, "baseline_results", None), self._eval_split_names())
        if "eval" in baseline and self.eval_split_name != "eval" and self.eval_split_name not in baseline:
            baseline[self.eval_split_name] = baseline.pop("eval")
        return baseline

    def _eval_split_names(self) -> list[str]:
        return list(self.eval_dataset) if isinstance(self.eval_dataset, dict) else []

    def model_card_info(self):
        """What the model card shows: the latest eval metrics, the bias description and the baseline run's
        metrics from the arguments (``--bias_description``, ``--baseline_results``), plus ``card_extras``
        (``ModelCardInfo`` fields a caller adds after evaluating: ``hf-debias train`` sets ``report_chart``,
        ``heatmaps`` and ``artifact_relevance``)."""
        from .hub import ModelCardInfo

        args = self.args
        return ModelCardInfo(bias=getattr(args, "bias_description", None),
                             dataset=getattr(args, "card_dataset", None), metrics=self.latest_eval_metrics(),
                             baseline_metrics=self.baseline_metrics(),
                             **getattr(self, "card_extras", {}))

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
                          private=private if private is not None else self.args.hub_private_repo,
                          image_processor=self.processing_class)


TRAINING_ARGS_JSON = "training_args.json"
_NOT_METRICS = {"loss", "runtime", "samples_per_second", "steps_per_second", "epoch", "model_preparation_time"}
_RECORD_ONLY = {"hf_debias_version", "base_model_name_or_path", "revision"}
"""``debias_config.json`` fields that record where a model came from; they do not change the correction."""


def _checkpoint_debias_config(checkpoint: str) -> DebiasConfig | None:
    if not (Path(checkpoint) / CONFIG_NAME).is_file():
        return None
    try:
        return DebiasConfig.from_pretrained(checkpoint)
    except (ValueError, TypeError, OSError) as error:
        raise ValueError(f"Cannot resume from {str(checkpoint)!r}: its {CONFIG_NAME} cannot be read "
                         f"({error}).") from error


def debias_config_differences(saved: DebiasConfig | None, current: DebiasConfig | None) -> list[str]:
    """What differs between a checkpoint's config and a run's, as ``"field: checkpoint X, this run Y"`` texts:
    the method and every hyper-parameter; not the record-only fields (version, base model, revision); the CAV
    by content (vector and statistics), not by path. A field this run leaves ``"auto"`` matches the value the
    checkpoint recorded: binding the config to the same model resolves it the same way (RR-ClArC's
    ``penalty_form``)."""
    if saved is None and current is None:
        return []
    if saved is None or current is None:
        return [f"method: checkpoint {saved.debias_method if saved else f'none (no {CONFIG_NAME})'}, "
                f"this run {current.debias_method if current else 'none'}"]
    if saved.debias_method != current.debias_method:
        return [f"method: checkpoint {saved.debias_method}, this run {current.debias_method}"]
    if getattr(saved, "is_composition", False):
        return _composed_differences(saved, current)
    before, after = saved.to_dict(), current.to_dict()
    differences = [f"{key}: checkpoint {before.get(key)!r}, this run {after.get(key)!r}"
                   for key in sorted(set(before) | set(after))
                   if key not in _RECORD_ONLY and key != "cav" and before.get(key) != after.get(key)
                   and after.get(key) != "auto"]
    if hasattr(saved, "load_cav") and hasattr(current, "load_cav"):
        saved_cav, current_cav = saved.load_cav(), current.load_cav()
        cav_before = {key: value for key, value in saved_cav.metadata().items() if key != "hf_debias_version"}
        cav_after = {key: value for key, value in current_cav.metadata().items() if key != "hf_debias_version"}
        changed = [key for key in sorted(cav_before) if cav_before[key] != cav_after.get(key)]
        if saved_cav.vector.shape != current_cav.vector.shape or not torch.equal(saved_cav.vector,
                                                                                 current_cav.vector):
            changed.insert(0, "vector")
        if changed:
            differences.append(f"cav: the checkpoint's CAV and this run's ({current_cav.name_or_path!r}) differ "
                               f"in {', '.join(changed)}")
    return differences


def _composed_differences(saved: DebiasConfig, current: DebiasConfig) -> list[str]:
    """A composition's differences part by part (each part compared as a config of its own, its CAV by content),
    each text prefixed with the part's position and method."""
    if len(saved.corrections) != len(current.corrections):
        return [f"corrections: checkpoint has {len(saved.corrections)} parts "
                f"({', '.join(part.debias_method for part in saved.corrections)}), this run "
                f"{len(current.corrections)} ({', '.join(part.debias_method for part in current.corrections)})"]
    return [f"corrections[{index}] ({saved_part.debias_method}) {difference}"
            for index, (saved_part, current_part) in enumerate(zip(saved.corrections, current.corrections))
            for difference in debias_config_differences(saved_part, current_part)]


def _read_baseline(path: str | None, split_names: list[str]) -> dict[str, dict[str, float]]:
    """A baseline run's metrics: ``{split: {metric: value}}`` JSON, or Trainer's flat ``eval_results.json``."""
    if not path:
        return {}
    data = _baseline_data(path)
    if all(isinstance(value, dict) for value in data.values()):
        return {split: {key: float(value) for key, value in values.items() if not is_group_structure_key(key)}
                for split, values in data.items()}
    return metrics_by_split(data, split_names)


def metrics_by_split(flat: dict, split_names: list[str], *, group_structure: bool = False,
                     ) -> dict[str, dict[str, float]]:
    """Trainer's flat ``eval_<split>_<metric>`` (or ``eval_<metric>``) numbers as ``{split: {metric: value}}``.
    Group ids, sizes and alignment flags (``group_*_count``, ``worst_group_label``...) are not metrics and are
    left out, unless ``group_structure`` keeps each group's ``_count`` and ``_aligned`` (for a per-group table);
    the per-group accuracies stay."""
    metrics: dict[str, dict[str, float]] = {}
    for key, value in flat.items():
        if not key.startswith("eval_") or not isinstance(value, (int, float)):
            continue
        rest = key[len("eval_"):]
        split = next((name for name in split_names if rest.startswith(name + "_")), "eval")
        metric = rest[len(split) + 1:] if split != "eval" else rest
        if metric in _NOT_METRICS:
            continue
        if is_group_structure_key(metric) or isinstance(value, bool):
            if group_structure and metric.startswith("group_") and metric.endswith(("_count", "_aligned")):
                metrics.setdefault(split, {})[metric] = value if isinstance(value, bool) else int(value)
            continue
        metrics.setdefault(split, {})[metric] = float(value)
    return metrics


def _class_ids_of_column(column: str, value: torch.Tensor) -> torch.Tensor:
    """A batch's label column as int64; floats, bools and complex numbers are an error naming the column."""
    if not isinstance(value, torch.Tensor):
        return value  # the wrapper's own check names what it got
    if value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
        raise ValueError(f"The column {column!r} must hold integer class ids, got dtype {value.dtype}. Cast it, "
                         f"e.g. dataset.cast_column({column!r}, datasets.Value('int64')), or map the values to "
                         "0..K-1.")
    return value.long()


def _check_label_columns(dataset, columns, which: str) -> None:
    """Fail at construction on a label or bias column whose declared type is not integer ids."""
    features = getattr(dataset, "features", None)
    if not features:
        return
    for column in dict.fromkeys(columns):
        feature = features.get(column)
        dtype = getattr(feature, "dtype", None)
        if feature is None or type(feature).__name__ == "ClassLabel" or dtype is None:
            continue
        if not re.fullmatch(r"u?int(8|16|32|64)", str(dtype)):
            raise ValueError(f"{column} must hold integer class ids, but the {which} dataset's column {column!r} "
                             f"has dtype {dtype}. Cast it, e.g. dataset.cast_column({column!r}, "
                             "datasets.Value('int64')), or map the values to 0..K-1.")


PSEUDO_LABELS_FOLDER = "pseudo_bias_labels"
"""Where ``--bias_label_column auto`` saves its labels and auxiliary model, inside ``output_dir``."""
PSEUDO_BIAS_COLUMN = "bias_labels"
"""The item key the pseudo labels are given under."""


class WithBiasLabels(torch.utils.data.Dataset):
    """A training set whose every item also has ``column`` (the pseudo bias labels), after its own transform."""

    def __init__(self, dataset, labels: np.ndarray, column: str = PSEUDO_BIAS_COLUMN) -> None:
        if len(labels) != len(dataset):
            raise ValueError(f"{len(labels)} pseudo bias labels for a training set of {len(dataset)} items.")
        self.dataset, self.labels, self.column = dataset, labels, column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        return {**self.dataset[index], self.column: int(self.labels[index])}


def _check_no_bias_column(dataset) -> None:
    """``--bias_label_column auto`` on data that already has bias labels is an error: the pseudo labels would
    silently take the place of real ones (use those with ``--bias_label_column bias_labels``, or drop them)."""
    names = getattr(dataset, "column_names", None) or []
    if PSEUDO_BIAS_COLUMN in names:
        raise ValueError(f"--bias_label_column auto computes pseudo bias labels, but the training dataset already "
                         f"has a {PSEUDO_BIAS_COLUMN!r} column. Use it (--bias_label_column {PSEUDO_BIAS_COLUMN}), "
                         f"or remove it (dataset.remove_columns({PSEUDO_BIAS_COLUMN!r})) to use pseudo labels.")


def _check_training_data(dataset, bias_column: str, args: TrainingArguments, config: DebiasConfig, *,
                         pseudo: bool = False) -> None:
    """Fail early on a missing bias or mask column; warn where the penalty would silently have nothing to work on.
    ``pseudo``: the bias labels are computed later (``--bias_label_column auto``), not read from a column."""
    needs_bias = method_class_for(config).needs_bias_labels
    names = getattr(dataset, "column_names", None)
    mask_column = mask_column_of(config)
    if mask_column is not None and names is not None and mask_column not in names:
        raise ValueError(f"--debias {config.debias_method} needs a mask per image, but the training dataset has no "
                         f"column {mask_column!r}; its columns are {names}. Pass --rrr_mask_column NAME "
                         "(mask_column=... in the config).")
    if needs_bias and names is not None and not pseudo:
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


def mask_column_of(config: DebiasConfig | None) -> str | None:
    """The dataset column of per-image masks that ``config``'s method reads (RRR), else None."""
    if config is None or not method_class_for(config).needs_masks:
        return None
    return config.mask_column


def _aligned_bias_of(dataset, bias_column: str) -> dict[int, int] | None:
    """The bias value each label co-occurs with most in ``dataset`` (None without both columns)."""
    names = getattr(dataset, "column_names", None) or []
    if "labels" not in names or bias_column not in names:
        return None
    return infer_aligned_bias(dataset["labels"], dataset[bias_column])
