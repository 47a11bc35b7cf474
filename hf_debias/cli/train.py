"""``hf-debias train``: fine-tune an image classifier with ``DebiasTrainer``; ``--debias end`` turns EnD on.

The flags are ``ModelArguments``, ``DataArguments`` and every ``TrainingArguments`` flag plus the debias ones
(``DebiasTrainingArguments``), parsed by ``HfArgumentParser`` exactly as in the transformers example scripts.
The data is the built-in ``colour-digits`` / ``controlled-artifact``, or any layout that
``hf_debias.data.load_image_dataset`` reads (class folders, a metadata table, Waterbirds, CelebA, a Hub dataset).
Training uses the ``train`` split only; ``--eval_split`` picks the evaluation splits (default ``validation``, else
``test``). The end prints one group table per eval split and writes ``report.json`` / ``report.png``.

    hf-debias train --model_name_or_path resnet18 --dataset waterbird_complete95_forest2water2 \\
        --label_column y --bias_label_column place --output_dir out --debias end --num_train_epochs 3
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ._parsing import handler_for, info_logging

if TYPE_CHECKING:  # the command's parser is built without importing torch / transformers
    import datasets

    from ..trainer import DebiasTrainer
    from ..training_args import DebiasTrainingArguments

COLOUR_DIGITS = "colour-digits"
CONTROLLED_ARTIFACT = "controlled-artifact"
BUILT_IN_EVAL = {COLOUR_DIGITS: ["test_unbiased"], CONTROLLED_ARTIFACT: ["test_clean", "test_attacked"]}
BIAS_COLUMN = "bias_labels"
"""The column the bias ends up in, whatever the source calls it (``--bias_label_column`` names the source)."""

USAGE = ("%(prog)s [--model_name_or_path MODEL] [--dataset DATA] [--label_column COLUMN] "
         "[--bias_label_column COLUMN] [--debias METHOD] --output_dir OUT [other options below]")

logger = logging.getLogger("hf_debias")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default="simple_convnet", metadata={
        "help": "a timm model name, an hf-hub:/local-dir: timm id, a timm repo or folder, or a transformers model "
                "id or folder"})
    pretrained: bool = field(default=False, metadata={
        "help": "load pretrained weights for a timm architecture name (Hub ids and folders always load theirs)"})
    model_revision: str | None = field(default=None, metadata={"help": "Hub revision of the model repo"})


@dataclass
class DataArguments:
    dataset: str = field(default=COLOUR_DIGITS, metadata={
        "help": "'colour-digits' or 'controlled-artifact' (built in, offline), a folder (class sub-folders, with "
                "or without split folders; a metadata table; Waterbirds or CelebA as downloaded; a Hub dataset "
                "repo clone), a metadata table file, or a Hugging Face dataset id. The bias column is "
                "--bias_label_column"})
    label_column: str | None = field(default=None, metadata={
        "help": "column (or CelebA attribute) with the class; default: label / labels / y, or the class folders"})
    image_column: str | None = field(default=None, metadata={
        "help": "column with the image or its path; default: found among file_name, img_filename, image_id, "
                "image, path, filepath"})
    split_column: str | None = field(default=None, metadata={
        "help": "column naming each row's split (train / val / test or 0 / 1 / 2); default 'split' when present, "
                "'none' for no split column"})
    bias_csv: str | None = field(default=None, metadata={
        "help": "table of per-image bias labels, matched by the path relative to the dataset folder"})
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub revision of a dataset id"})
    eval_split: str | None = field(default=None, metadata={
        "help": "split(s) to evaluate on, comma-separated (default: test_unbiased for colour-digits, "
                "test_clean,test_attacked for controlled-artifact, else validation, else test)"})
    max_train_samples: int | None = field(default=None, metadata={
        "help": "train on a random N of the training samples (drawn with --seed)"})
    max_eval_samples: int | None = field(default=None, metadata={
        "help": "evaluate on a random N of each eval split's samples (drawn with --seed)"})
    augment: bool = field(default=True, metadata={
        "help": "training augmentation from the model's data config (timm's create_transform(is_training=True); "
                "random-resized crop and flip for transformers models); --no_augment: the eval transform"})
    image_size: int | None = field(default=None, metadata={
        "help": "train and evaluate at N x N pixels (also img_size=N for timm models that take it, e.g. ViTs); "
                "default: the model's own input size"})
    rho: float = field(default=0.99, metadata={"help": "colour-digits: bias strength of the training split"})
    colour_digits_train_size: int = field(default=60_000, metadata={"help": "colour-digits: training images"})
    heatmap_mask_column: str | None = field(default=None, metadata={
        "help": "eval column of artifact masks (image-sized, non-zero on the artifact): the report adds the "
                "artifact relevance R_bias of the model before and after training on the eval images with a "
                "non-empty mask, and heatmaps.png (also in the model card); default: --rrr_mask_column with "
                "--debias rrr, artifact_mask for controlled-artifact, else none; 'none' turns it off"})
    heatmap_images: str | None = field(default=None, metadata={
        "help": "folder of concept images (e.g. those of the CAV): heatmaps.png shows where the model looks on "
                "them before and after training (no masks, so no R_bias)"})
    heatmap_samples: int = field(default=64, metadata={
        "help": "images R_bias is measured on (the first 6 are drawn)"})


@dataclass
class TrainingData:
    """What ``load_data`` returns: the train split, the eval splits by name, and the names of the classes and of
    the bias values (``None`` where the source has none), and the source's name for the bias column."""

    train: datasets.Dataset
    evaluation: dict[str, datasets.Dataset]
    num_classes: int
    class_names: list[str] | None
    bias_names: list[str] | None
    bias_source: str = BIAS_COLUMN


def load_data(data_args: DataArguments, bias_label_column: str | None = None, *, seed: int = 42,
              mask_column: str | None = None, eval_mask_column: str | None = None) -> TrainingData:
    """The ``train`` split and the eval splits, with the columns ``image``, ``labels`` and, when there is a bias,
    ``bias_labels`` (read from the source column ``bias_label_column``; ``None`` or ``"bias_labels"``: the
    source's ``bias_labels`` if it has one) and ``mask_column`` (RRR's per-image masks) where a split has it;
    ``eval_mask_column`` (the report's artifact masks) is kept in the eval splits that have it.
    ``--max_train_samples`` / ``--max_eval_samples`` take a random subset
    drawn with ``seed``."""
    # "auto": pseudo bias labels, computed by DebiasTrainer (there is no source column to read)
    source_bias = None if bias_label_column in (None, BIAS_COLUMN, "auto") else bias_label_column
    if data_args.dataset in BUILT_IN_EVAL:
        splits = _built_in(data_args, source_bias)
    else:
        from ..data.image_dataset import load_image_dataset

        splits = load_image_dataset(data_args.dataset, label_column=data_args.label_column,
                                    bias_label_column=source_bias, split_column=data_args.split_column,
                                    image_column=data_args.image_column, bias_csv=data_args.bias_csv,
                                    revision=data_args.dataset_revision)
    names = list(splits)
    if "train" not in splits:
        raise ValueError(f"{data_args.dataset!r} has no 'train' split; its splits are {names}.")
    eval_names = _eval_split_names(data_args, names)
    keep = [column for column in ("image", "labels", BIAS_COLUMN) if column in splits["train"].column_names]
    for column in ("image", "labels"):
        if column not in keep:
            raise ValueError(f"The training split of {data_args.dataset!r} has no {column!r} column; it has "
                             f"{splits['train'].column_names}.")
    if mask_column is not None:
        if mask_column not in splits["train"].column_names:
            raise ValueError(f"--rrr_mask_column {mask_column!r}: the training split of {data_args.dataset!r} has no "
                             f"such column; its columns are {splits['train'].column_names}.")

    def columns(name: str, split) -> list[str]:
        wanted = [mask_column] + ([eval_mask_column] if name in eval_names else [])
        return keep + [c for c in dict.fromkeys(wanted) if c is not None and c in split.column_names]

    splits = type(splits)({name: split.select_columns(columns(name, split)) for name, split in splits.items()})
    labels = splits["train"].features["labels"]
    if hasattr(labels, "num_classes"):  # a ClassLabel: the classes of the whole dataset, not of one split
        num_classes, class_names = labels.num_classes, list(labels.names)
    else:
        # the splits this run reads only: a sweep never reads a test split, not even its labels
        num_classes = 1 + max(max(splits[name]["labels"]) for name in ("train", *eval_names) if len(splits[name]))
        class_names = None
    bias = splits["train"].features.get(BIAS_COLUMN)
    bias_names = list(bias.names) if hasattr(bias, "names") else None
    train = splits["train"]
    evaluation = {name: splits[name] for name in eval_names}
    # A random subset, as in transformers' run_image_classification.py: the first N of a folder is one class.
    if data_args.max_train_samples:
        train = train.shuffle(seed=seed).select(range(min(data_args.max_train_samples, len(train))))
    if data_args.max_eval_samples:
        evaluation = {name: split.shuffle(seed=seed).select(range(min(data_args.max_eval_samples, len(split))))
                      for name, split in evaluation.items()}
    if len(train) == 0:
        raise ValueError(f"The training split of {data_args.dataset!r} is empty.")
    return TrainingData(train, evaluation, num_classes, class_names, bias_names, source_bias or BIAS_COLUMN)


def _built_in(data_args: DataArguments, source_bias: str | None):
    given = [f"--{name}" for name in ("label_column", "image_column", "split_column", "bias_csv",
                                      "dataset_revision") if getattr(data_args, name) is not None]
    if given:
        warnings.warn(f"{', '.join(given)} does not apply to the built-in {data_args.dataset!r}; ignored.",
                      stacklevel=3)
    if data_args.dataset == COLOUR_DIGITS:
        from ..data import build_colour_digits

        splits = build_colour_digits(data_args.rho, n_train=data_args.colour_digits_train_size,
                                     n_validation=1000, n_test=5000, image_size=16)
    else:
        from ..data import build_controlled_artifact

        splits = build_controlled_artifact()
    if source_bias is not None:
        columns = splits["train"].column_names
        if source_bias not in columns:
            raise ValueError(f"--bias_label_column {source_bias!r}: {data_args.dataset!r} has no such column; its "
                             f"columns are {columns}.")
        splits = splits.remove_columns([c for c in (BIAS_COLUMN,) if c in columns]).rename_column(
            source_bias, BIAS_COLUMN)
    return splits


def _eval_split_names(data_args: DataArguments, names: list[str]) -> list[str]:
    if data_args.eval_split:
        from ..data.image_dataset import SPLIT_ALIASES

        chosen = []
        for name in (name.strip() for name in data_args.eval_split.split(",") if name.strip()):
            alias = SPLIT_ALIASES.get(name.lower()) if not name.isdigit() else None
            if name not in names and alias in names:  # the loader renamed the source's val / valid / dev ...
                logger.info("--eval_split %s: the %s split (hf_debias names the splits train / validation / test).",
                            name, alias)
                name = alias
            chosen.append(name)
            if name not in names:
                raise ValueError(f"--eval_split {name!r}: {data_args.dataset!r} has no such split; its splits "
                                 f"are {names}.")
        return chosen
    default = BUILT_IN_EVAL.get(data_args.dataset) or next(([name] for name in ("validation", "test")
                                                           if name in names), [])
    if default:
        logger.info("Evaluating on the %s split%s (--eval_split chooses among %s).", ", ".join(default),
                    "s" if len(default) > 1 else "", ", ".join(n for n in names if n != "train") or "none")
    else:
        warnings.warn(f"{data_args.dataset!r} has no validation or test split (splits: {names}): nothing is "
                      "evaluated. Pass --eval_split, or give the data a split column or split folders.",
                      stacklevel=3)
    return default


def build_model_and_transforms(model_args: ModelArguments, data_args: DataArguments, data: TrainingData):
    """The classifier (class names stored in it), its image processor for transformers models (``None`` for timm
    models) and the training / evaluation transforms."""
    from ..data.transforms import train_eval_transforms
    from ..loading import load_classifier, load_image_processor

    model = load_classifier(model_args.model_name_or_path, num_classes=data.num_classes,
                            pretrained=model_args.pretrained, img_size=data_args.image_size,
                            class_names=data.class_names, revision=model_args.model_revision)
    processor = None
    if not isinstance(getattr(model, "pretrained_cfg", None), dict):  # a transformers model: its image processor
        try:
            processor = load_image_processor(model_args.model_name_or_path, revision=model_args.model_revision)
        except OSError as err:
            raise ValueError(f"{model_args.model_name_or_path!r} has no image processor (preprocessor_config.json), "
                             f"so hf_debias cannot tell how to prepare its images: {err}") from err
        if data_args.image_size is not None and getattr(model, "timm_model", None) is None:
            _resize_processor(processor, data_args.image_size)  # a TimmWrapper's comes from timm's data config
    train_transform, eval_transform = train_eval_transforms(
        model, model_args.model_name_or_path, augment=data_args.augment, image_size=data_args.image_size,
        processor=processor)
    return model, processor, train_transform, eval_transform


def _resize_processor(processor, size: int) -> None:
    """Make the saved image processor produce ``size x size`` images, as the model was trained."""
    current = getattr(processor, "size", None)
    shortest = current.get("shortest_edge") if isinstance(current, dict) else getattr(current, "shortest_edge", None)
    processor.size = {"shortest_edge": size} if shortest else {"height": size, "width": size}
    if getattr(processor, "do_center_crop", False):
        processor.crop_size = {"height": size, "width": size}


def run_training(model_args: ModelArguments, data_args: DataArguments, training_args: DebiasTrainingArguments,
                 ) -> tuple[DebiasTrainer, dict[str, float], TrainingData]:
    """Fine-tune on the train split, evaluate, report (``summarise``; heatmaps when the run has masks or concept
    images), save; returns the trainer, the final eval metrics and the data."""
    from ..trainer import DebiasTrainer

    from ._heatmaps import check_heatmap_arguments, heatmap_mask_column, prepare_heatmaps

    check_heatmap_arguments(data_args)
    mask_column = mask_column_of(training_args)
    data = load_data(data_args, training_args.bias_label_column, seed=training_args.seed, mask_column=mask_column,
                     eval_mask_column=heatmap_mask_column(data_args, mask_column))
    model, processor, train_transform, eval_transform = build_model_and_transforms(model_args, data_args, data)
    heatmaps = prepare_heatmaps(data_args, training_args, data, model, eval_transform, mask_column) \
        if training_args.process_index == 0 else None
    if not training_args.uses_pseudo_labels:  # "auto" stays: DebiasTrainer computes the labels
        training_args.bias_label_column = BIAS_COLUMN  # --bias_label_column named the source column; this is ours
    elif BIAS_COLUMN in data.train.column_names:  # the source's own bias column: not for training, only to measure
        logger.warning("--bias_label_column auto: %s has a %s column; training uses pseudo bias labels instead of "
                       "it, the eval splits keep theirs for the group metrics (to train on it, pass "
                       "--bias_label_column %s).", data_args.dataset, BIAS_COLUMN, BIAS_COLUMN)
        data.train = data.train.remove_columns(BIAS_COLUMN)
    training_args.remove_unused_columns = False  # the transform produces exactly the columns the model needs
    to_train, to_eval, collate = batch_functions(train_transform, eval_transform, mask_column)

    if training_args.card_dataset is None:
        training_args.card_dataset = data_args.dataset
    evaluation = data.evaluation
    eval_dataset = (next(iter(evaluation.values())) if len(evaluation) == 1 else evaluation) or None
    trainer = DebiasTrainer(model=model, args=training_args, train_dataset=data.train, eval_dataset=eval_dataset,
                            data_collator=collate, processing_class=processor)
    if len(evaluation) == 1:
        trainer.eval_split_name = next(iter(evaluation))  # the card names the split, not "eval"
    # After DebiasTrainer has read the label columns (no image is decoded for that), before any batch is built.
    data.train.set_transform(to_train)
    for split in evaluation.values():
        split.set_transform(to_eval)
    result = trainer.train(resume_from_checkpoint=resolve_checkpoint(training_args))
    trainer.save_metrics("train", {**result.metrics, "train_samples": len(data.train)})
    trainer.save_state()  # trainer_state.json in output_dir, as in transformers' run_image_classification.py
    metrics = trainer.evaluate() if evaluation else {}
    if metrics:
        trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        relevance = None
        if heatmaps is not None:
            from ..loading import unwrap_model
            from ._heatmaps import finish_heatmaps

            relevance = finish_heatmaps(heatmaps, unwrap_model(trainer.model, through_debias=False),
                                        training_args.output_dir, training_args.debias)
        chart = summarise(trainer, metrics, data, model_args, data_args, relevance=relevance)
        trainer.card_extras = {"report_chart": chart} if chart is not None else {}
        if data.bias_names is not None:
            trainer.card_extras["bias_names"] = data.bias_names
        if relevance is not None:
            trainer.card_extras.update(heatmaps=relevance["heatmaps"], artifact_relevance=relevance[
                "artifact_relevance"], artifact_relevance_note=relevance["note"])
    trainer.save_model()  # after the report, so the card has the metrics and charts; with --push_to_hub one commit
    return trainer, metrics, data


def mask_column_of(training_args) -> str | None:
    """The dataset column of per-image masks the run's method reads (``--rrr_mask_column`` for RRR), else None."""
    from ..trainer import mask_column_of as config_mask_column

    return config_mask_column(training_args.debias_config())


_KEEP = ("labels", BIAS_COLUMN)


class BatchTransform:
    """``set_transform`` of a split: the images through the model's transform into ``pixel_values``, the labels
    and bias labels kept, and RRR's masks through ``to_masks`` (a class, not a closure, so that Ray Tune can send
    the datasets to its workers)."""

    def __init__(self, to_pixels, mask_column: str | None = None, to_masks=None) -> None:
        self.to_pixels, self.mask_column, self.to_masks = to_pixels, mask_column, to_masks

    def __call__(self, batch):
        out = {"pixel_values": self.to_pixels(batch["image"])}
        out.update({key: batch[key] for key in _KEEP if key in batch})
        if self.to_masks is not None and self.mask_column in batch:
            out[self.mask_column] = self.to_masks(batch[self.mask_column])
        return out


class BatchCollator:
    """Stack ``pixel_values`` (and RRR's masks); labels and bias labels as integer tensors."""

    def __init__(self, mask_column: str | None = None) -> None:
        self.mask_column = mask_column

    def __call__(self, rows):
        import numpy as np
        import torch

        batch = {"pixel_values": torch.stack([row["pixel_values"] for row in rows])}
        for key in _KEEP:
            if key in rows[0]:
                batch[key] = torch.tensor(np.asarray([row[key] for row in rows]))
        if self.mask_column is not None and self.mask_column in rows[0]:
            batch[self.mask_column] = torch.stack([row[self.mask_column] for row in rows])
        return batch


def batch_functions(train_transform, eval_transform, mask_column: str | None = None,
                    ) -> tuple[BatchTransform, BatchTransform, BatchCollator]:
    """The train and eval ``set_transform`` functions and the collator of a run. With RRR's ``mask_column`` each
    mask goes through its image's own resize and crop, so training uses the evaluation transform (a random crop
    or flip would move the image away from its mask), with a warning when augmentation was on."""
    to_masks = None
    if mask_column is not None:
        from ..data.transforms import mask_transform_for

        if train_transform is not eval_transform:
            logger.warning("--debias rrr: training uses the evaluation transform (no random crop or flip), so that "
                           "each %s mask stays on its image's pixels.", mask_column)
            train_transform = eval_transform
        to_masks = mask_transform_for(eval_transform)
    return (BatchTransform(train_transform, mask_column, to_masks),
            BatchTransform(eval_transform, mask_column, to_masks), BatchCollator(mask_column))


def resolve_checkpoint(training_args) -> str | None:
    """``--resume_from_checkpoint``: a checkpoint folder, or ``true`` / ``last`` for the newest ``checkpoint-N`` in
    ``--output_dir`` (Trainer's ``resume_from_checkpoint=True``); a folder that does not exist is an error."""
    from transformers.trainer_utils import get_last_checkpoint

    value = training_args.resume_from_checkpoint
    if value is None or str(value).strip().lower() in ("", "false", "no", "none"):
        return None
    if str(value).strip().lower() in ("true", "yes", "last"):
        last = get_last_checkpoint(training_args.output_dir) if Path(training_args.output_dir).is_dir() else None
        if last is None:
            raise FileNotFoundError(f"--resume_from_checkpoint {value}: --output_dir {training_args.output_dir} "
                                    "holds no checkpoint-N folder to resume from.")
        logger.info("Resuming from %s (the newest checkpoint in --output_dir).", last)
        return last
    if not Path(value).is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: no such checkpoint folder (pass a checkpoint-N "
                                "folder, or 'true' for the newest one in --output_dir).")
    return str(value)


def split_metrics(metrics: dict[str, float], split_names: Sequence[str]) -> dict[str, dict[str, object]]:
    """The eval metrics of each split without the ``eval_[<split>_]`` prefix (one split: plain ``eval_*`` keys)."""
    out: dict[str, dict[str, object]] = {name: {} for name in split_names}
    if len(split_names) == 1:
        out[split_names[0]] = {key[len("eval_"):]: value for key, value in metrics.items() if key.startswith("eval_")}
        return out
    by_length = sorted(split_names, key=len, reverse=True)  # "test_clean" before "test"
    for key, value in metrics.items():
        name = next((name for name in by_length if key.startswith(f"eval_{name}_")), None)
        if name is not None:
            out[name][key[len(f"eval_{name}_"):]] = value
    return out


def summarise(trainer: DebiasTrainer, metrics: dict[str, float], data: TrainingData,
              model_args: ModelArguments, data_args: DataArguments, *,
              relevance: dict | None = None) -> Path | None:
    """Print the results (one summary line and one group table per eval split, R_bias before / after when
    ``relevance`` holds the heatmaps' results) and write ``report.json`` / ``report.png`` into the output folder;
    returns the PNG's path (None without eval splits)."""
    from ..metrics.group import groups_from_metrics
    from ..hub.cards import unproven_evidence_note
    from ..report import GROUP_METRICS, format_group_table, format_table, write_report

    args = trainer.args
    names = list(data.evaluation)
    run = f"{model_args.model_name_or_path} ({args.debias})"
    per_split = split_metrics(metrics, names)
    lines = [f"\n{run} on {data_args.dataset}: trained on {len(data.train)} images of the train split"]
    if not names:
        lines.append("No evaluation split, so no results to report (pass --eval_split).")
        print("\n".join(lines))
        return None
    lines += ["", format_table(per_split, GROUP_METRICS, name_header="split")]
    groups = {}
    for name in names:
        groups[name] = groups_from_metrics(per_split[name])
        values = per_split[name]
        if not groups[name]:
            lines.append(f"\n{name}: no bias labels, so no group table.")
            continue
        worst = (values.get("worst_group_label"), values.get("worst_group_bias"))
        lines += [f"\n{name}: {len(data.evaluation[name])} images in {len(groups[name])} (class, bias) groups",
                  format_group_table(groups[name], class_names=data.class_names, bias_names=data.bias_names,
                                     worst=worst if None not in worst else None, bias_header=data.bias_source)]
    baseline = trainer.baseline_metrics()
    after, before = f"after: {args.debias}", "before: baseline"
    panels = {name: ({before: baseline[name]} if name in baseline else {}) | {after: per_split[name]}
              for name in names}
    if args.baseline_results and not any(name in baseline for name in names):
        warnings.warn(f"--baseline_results {args.baseline_results!r} has the splits {sorted(baseline)}, this run "
                      f"evaluated {names}: the report shows no before/after comparison.", stacklevel=2)
    title = f"{run} on {Path(data_args.dataset).name or data_args.dataset}"
    evidence = unproven_evidence_note(per_split, bool(relevance and relevance["artifact_relevance"]))
    json_path, png_path = write_report(args.output_dir, panels=panels, title=title, metrics=GROUP_METRICS, details={
        "model": model_args.model_name_or_path, "debias": args.debias, "dataset": data_args.dataset,
        "train_samples": len(data.train), "eval_samples": {name: len(data.evaluation[name]) for name in names},
        "class_names": data.class_names, "bias_column": data.bias_source, "bias_names": data.bias_names,
        "groups": groups,
        "baseline_results": args.baseline_results,
        "evidence_note": evidence,
        **({"heatmaps": relevance["details"]} if relevance else {})})
    if relevance and relevance["artifact_relevance"]:
        lines.append("\nArtifact relevance R_bias (share of the attribution inside the artifact mask; lower: the "
                     f"model looks less at it), {relevance['note']}:")
        lines += [f"  {name}: {value:.3f}" for name, value in relevance["artifact_relevance"].items()]
    if evidence:
        lines.append("\n" + evidence.replace("**", ""))
    lines.append(f"\nReport: {json_path} and {png_path}" + (
        f"; heatmaps: {relevance['heatmaps']}" if relevance else ""))
    print("\n".join(lines))
    return png_path


def add_parser(subparsers) -> argparse.ArgumentParser:
    train = subparsers.add_parser(
        "train", add_help=False,
        help="fine-tune a classifier with DebiasTrainer; `--debias end` turns EnD on (see `hf-debias train --help`)",
    )
    train.add_argument("arguments", nargs=argparse.REMAINDER,
                       help="model, data and Trainer flags; `hf-debias train --help` lists them all")
    train.set_defaults(handler=run)
    return train


def run(args: argparse.Namespace) -> int:
    return handler_for(main)(args)


def extended_parser(prog: str, usage: str, description: str, title: str):
    """``hf-debias train``'s parser for another command (``sweep``, ``compare``): its ``prog``, usage and
    description, and a group ``title`` for the command's own flags, shown right after the debias options."""
    parser = build_parser()
    parser.prog, parser.usage, parser.description = prog, usage, description
    group = parser.add_argument_group(title)
    groups = parser._action_groups
    groups.insert(next(i for i, g in enumerate(groups) if g.title == "debias (hf_debias)") + 1, groups.pop())
    return parser, group


def build_parser():
    """``HfArgumentParser`` over the model, data and training arguments, with ``--help`` in the order a user
    reads it: model, data, debias options, then the Trainer's own."""
    import dataclasses

    from transformers import HfArgumentParser, TrainingArguments

    from ..training_args import DebiasTrainingArguments

    class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        """Defaults shown, the description's lines kept."""

    parser = HfArgumentParser((ModelArguments, DataArguments, DebiasTrainingArguments), prog="hf-debias train",
                              description=__doc__.replace("``", ""), formatter_class=Formatter, usage=USAGE)
    ours = {f.name for f in dataclasses.fields(DebiasTrainingArguments)} - {
        f.name for f in dataclasses.fields(TrainingArguments)}
    groups = {title: parser.add_argument_group(title) for title in (
        "model", "data", "debias (hf_debias)", "training (transformers TrainingArguments)")}
    model_fields = {f.name for f in dataclasses.fields(ModelArguments)}
    data_fields = {f.name for f in dataclasses.fields(DataArguments)} | {"no_augment"}
    options = parser._optionals
    for action in list(options._group_actions):
        if action.dest == "help":
            continue
        title = ("model" if action.dest in model_fields else "data" if action.dest in data_fields else
                 "debias (hf_debias)" if action.dest in ours or action.dest.removeprefix("no_") in ours else
                 "training (transformers TrainingArguments)")
        options._group_actions.remove(action)
        groups[title]._group_actions.append(action)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    model_args, data_args, training_args = build_parser().parse_args_into_dataclasses(
        args=list(argv) if argv is not None else sys.argv[1:])
    with info_logging():
        run_training(model_args, data_args, training_args)  # prints the results and writes the report
    return 0
