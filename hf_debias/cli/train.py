"""``hf-debias train``: fine-tune an image classifier with ``DebiasTrainer``; ``--debias end`` turns EnD on.

The flags are ``ModelArguments``, ``DataArguments`` and every ``TrainingArguments`` flag plus the debias ones
(``DebiasTrainingArguments``), parsed by ``HfArgumentParser`` exactly as in the transformers example scripts.

    hf-debias train --model_name_or_path resnet18 --dataset colour-digits --output_dir out \\
        --debias end --end_alpha 10 --num_train_epochs 3 --use_cpu
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command's parser is built without importing torch / transformers
    from ..trainer import DebiasTrainingArguments

COLOUR_DIGITS = "colour-digits"
CONTROLLED_ARTIFACT = "controlled-artifact"


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default="simple_convnet", metadata={
        "help": "a timm model name, an hf-hub:/local-dir: timm id, or a transformers model id or folder"})
    pretrained: bool = field(default=False, metadata={
        "help": "load pretrained weights for a timm architecture name (Hub ids and folders always load theirs)"})


@dataclass
class DataArguments:
    dataset: str = field(default=COLOUR_DIGITS, metadata={
        "help": "'colour-digits' or 'controlled-artifact' (built in, offline), a Hugging Face dataset id, or a "
                "local image folder (class sub-folders, as datasets' imagefolder)"})
    image_column: str = field(default="image", metadata={"help": "column with the images"})
    label_column: str = field(default="labels", metadata={"help": "column with the integer class labels"})
    bias_csv: str | None = field(default=None, metadata={
        "help": "CSV with columns 'file_name' and the bias column, giving image folders their bias labels"})
    train_split: str = field(default="train", metadata={"help": "split to train on"})
    eval_split: str | None = field(default=None, metadata={
        "help": "split(s) to evaluate on, comma-separated (default: test_unbiased for colour-digits, "
                "test_clean,test_attacked for controlled-artifact, else validation or test if present)"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use only the first N training samples"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "use only the first N evaluation samples"})
    rho: float = field(default=0.99, metadata={"help": "colour-digits: bias strength of the training split"})
    colour_digits_train_size: int = field(default=60_000, metadata={"help": "colour-digits: training images"})


def load_data(data_args: DataArguments, bias_column: str):
    """The train ``datasets.Dataset`` (``image``, ``labels``, the bias column) and the eval dataset, a dict of
    them when several eval splits are asked for, or ``None``."""
    import datasets

    if data_args.dataset == COLOUR_DIGITS:
        from ..data import build_colour_digits

        splits = build_colour_digits(data_args.rho, n_train=data_args.colour_digits_train_size,
                                     n_validation=1000, n_test=5000, image_size=16)
        default_eval = "test_unbiased"
        if bias_column != "bias_labels":
            splits = splits.rename_column("bias_labels", bias_column)
    elif data_args.dataset == CONTROLLED_ARTIFACT:
        from ..data import build_controlled_artifact

        splits = build_controlled_artifact()
        default_eval = "test_clean,test_attacked"
    elif Path(data_args.dataset).is_dir():
        splits = datasets.load_dataset("imagefolder", data_dir=data_args.dataset)
        if data_args.bias_csv:
            splits = _attach_bias_csv(splits, data_args.bias_csv, bias_column)
        default_eval = None
    else:
        splits = datasets.load_dataset(data_args.dataset)
        default_eval = None
    names = list(splits)
    if data_args.train_split not in splits:
        raise ValueError(f"Split {data_args.train_split!r} not in {data_args.dataset!r}; its splits are {names}.")
    eval_split = data_args.eval_split or default_eval or next(
        (name for name in ("validation", "test") if name in splits), None)
    eval_names = eval_split.split(",") if eval_split else []
    for name in eval_names:
        if name not in splits:
            raise ValueError(f"Split {name!r} not in {data_args.dataset!r}; its splits are {names}.")
    renames = {data_args.image_column: "image", data_args.label_column: "labels"}
    if "label" in splits[data_args.train_split].column_names and data_args.label_column == "labels" and \
            "labels" not in splits[data_args.train_split].column_names:
        renames["label"] = "labels"  # imagefolder and many Hub datasets call it "label"
    train, evaluation = splits[data_args.train_split], {name: splits[name] for name in eval_names}
    for old, new in renames.items():
        if old != new and old in train.column_names:
            train = train.rename_column(old, new)
            evaluation = {name: split.rename_column(old, new) for name, split in evaluation.items()}
    for column in ("image", "labels"):
        if column not in train.column_names:
            raise ValueError(f"The training split has no {column!r} column (columns: {train.column_names}); "
                             f"use --{column.rstrip('s')}_column.")
    if data_args.max_train_samples:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    if data_args.max_eval_samples:
        evaluation = {name: split.select(range(min(data_args.max_eval_samples, len(split))))
                      for name, split in evaluation.items()}
    if len(evaluation) <= 1:  # one split: plain eval_* metrics; several: eval_<split>_*
        evaluation = next(iter(evaluation.values()), None)
    return train, evaluation


def _attach_bias_csv(splits, csv_path: str, bias_column: str):
    import csv

    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "file_name" not in rows[0] or bias_column not in rows[0]:
        raise ValueError(f"{csv_path} must have the columns 'file_name' and {bias_column!r}; it has "
                         f"{list(rows[0]) if rows else 'no rows'}.")
    bias_of = {Path(row["file_name"]).name: int(row[bias_column]) for row in rows}

    def add_bias(example):
        name = Path(example["image"].filename).name
        if name not in bias_of:
            raise ValueError(f"{name} has no row in {csv_path}.")
        return {bias_column: bias_of[name]}

    return splits.map(add_bias)


def run_training(model_args: ModelArguments, data_args: DataArguments, training_args: DebiasTrainingArguments):
    """Fine-tune, evaluate, save; returns the trainer and the final eval metrics."""
    import numpy as np
    import torch

    from ..loading import image_transform_for, load_classifier
    from ..trainer import DebiasTrainer

    train, evaluation = load_data(data_args, training_args.bias_label_column)
    num_labels = len(set(train["labels"]))
    model = load_classifier(model_args.model_name_or_path, num_classes=num_labels, pretrained=model_args.pretrained)
    to_pixels = image_transform_for(model, model_args.model_name_or_path)
    keep = ("labels", training_args.bias_label_column)

    def transform(batch):
        out = {"pixel_values": to_pixels(batch["image"])}
        out.update({key: batch[key] for key in keep if key in batch})
        return out

    train.set_transform(transform)
    for split in (evaluation.values() if isinstance(evaluation, dict) else [evaluation] if evaluation else []):
        split.set_transform(transform)
    training_args.remove_unused_columns = False  # the transform produces exactly the columns the model needs

    def collate(rows):
        batch = {"pixel_values": torch.stack([row["pixel_values"] for row in rows])}
        for key in keep:
            if key in rows[0]:
                batch[key] = torch.tensor(np.asarray([row[key] for row in rows]))
        return batch

    if training_args.card_dataset is None:
        training_args.card_dataset = data_args.dataset
    trainer = DebiasTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=evaluation,
                            data_collator=collate)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = trainer.evaluate() if evaluation else {}
    if metrics:
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    trainer.save_model()  # after evaluating, so the card has the metrics; with --push_to_hub also one commit
    return trainer, metrics


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
    arguments = args.arguments[1:] if args.arguments[:1] == ["--"] else args.arguments
    return main(arguments)


def main(argv: Sequence[str] | None = None) -> int:
    from transformers import HfArgumentParser

    from ..report import format_table
    from ..trainer import DebiasTrainingArguments

    parser = HfArgumentParser((ModelArguments, DataArguments, DebiasTrainingArguments), prog="hf-debias train",
                              description=__doc__)
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(
        args=list(argv) if argv is not None else sys.argv[1:])
    _, metrics = run_training(model_args, data_args, training_args)
    shown = {key[len("eval_"):]: value for key, value in metrics.items()
             if key.endswith("accuracy") and isinstance(value, float)}
    if shown:
        print("\n" + format_table({f"{model_args.model_name_or_path} ({training_args.debias})": shown},
                                  [(key, key.replace("_accuracy", "").replace("_", "-")) for key in shown]))
    return 0
