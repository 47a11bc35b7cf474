"""Fine-tune an image classifier with a known bias removed: the transformers image-classification example
(``examples/pytorch/image-classification/run_image_classification.py``) with ``Trainer`` / ``TrainingArguments``
swapped for ``DebiasTrainer`` / ``DebiasTrainingArguments`` and one more data flag, ``--bias_label_column_name``.

The flags and the flow are the example's: ``--dataset_name`` or ``--train_dir`` / ``--validation_dir``,
``--image_column_name``, ``--label_column_name``, ``--model_name_or_path``, ``--max_train_samples`` ...; load the
data, build torchvision train / eval transforms from the model's image processor, train, evaluate, save. What
differs:

- the data is read by ``hf_debias.data.load_image_dataset`` (a Hub dataset id, class folders, a metadata table such
  as Waterbirds' ``metadata.csv``, CelebA as downloaded); ``--bias_csv`` adds bias labels to an image folder;
- the model is built by ``hf_debias.loading.load_classifier``: a transformers model id or folder as in the original,
  and also a timm name or a timm Hub repo (timm's own data config gives its transforms);
- ``--debias end`` (and the method's options) turns the correction on; the default metrics are the group metrics
  (accuracy, worst-group, unbiased, bias-aligned / conflicting accuracy) instead of accuracy alone;
- the model is saved after evaluating, so that its card carries the metrics (with ``--push_to_hub``: one commit).

    python examples/run_image_classification.py --dataset_name waterbird_complete95_forest2water2 \\
        --label_column_name y --bias_label_column_name place --model_name_or_path google/vit-base-patch16-224-in21k \\
        --output_dir out --debias end --end_alpha 10 --do_train --do_eval --num_train_epochs 3
    python examples/run_image_classification.py --train_dir images/train --validation_dir images/val \\
        --model_name_or_path resnet18 --pretrained --output_dir out --debias none --do_train --do_eval
"""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass, field

import datasets
import transformers
from transformers import HfArgumentParser, set_seed

from hf_debias import DebiasTrainer, DebiasTrainingArguments
from hf_debias.data import load_image_dataset
from hf_debias.data.transforms import train_eval_transforms
from hf_debias.loading import load_classifier, load_image_processor

logger = logging.getLogger(__name__)


@dataclass
class DataTrainingArguments:
    """What data to train and evaluate on (the transformers example's flags, plus the bias column)."""

    dataset_name: str | None = field(default=None, metadata={
        "help": "a Hub dataset id or a local dataset in a layout hf_debias.data.load_image_dataset reads"})
    train_dir: str | None = field(default=None, metadata={"help": "a folder of training images in class folders"})
    validation_dir: str | None = field(default=None, metadata={
        "help": "a folder of validation images in class folders"})
    train_val_split: float | None = field(default=0.15, metadata={
        "help": "share of the training data held out for validation when there is no validation split"})
    max_train_samples: int | None = field(default=None, metadata={
        "help": "for debugging or quicker training: use at most this many training samples"})
    max_eval_samples: int | None = field(default=None, metadata={
        "help": "for debugging or quicker evaluation: use at most this many validation samples"})
    image_column_name: str | None = field(default=None, metadata={
        "help": "the column with the images or their paths (default: found among the usual names)"})
    label_column_name: str | None = field(default=None, metadata={
        "help": "the column with the class (default: label / labels / y, or the class folders)"})
    bias_label_column_name: str | None = field(default=None, metadata={
        "help": "the column with one bias label per image, e.g. Waterbirds' 'place' (default: bias_labels if "
                "the data has it)"})
    bias_csv: str | None = field(default=None, metadata={
        "help": "with --dataset_name FOLDER: a table of per-image bias labels, matched by the path relative to "
                "the folder"})

    def __post_init__(self) -> None:
        if self.dataset_name is None and self.train_dir is None and self.validation_dir is None:
            raise ValueError("Give either --dataset_name or --train_dir (and --validation_dir).")
        if self.dataset_name is not None and (self.train_dir or self.validation_dir):
            raise ValueError("Give either --dataset_name or --train_dir / --validation_dir, not both.")
        if self.bias_csv is not None and self.dataset_name is None:
            raise ValueError("--bias_csv is matched against the folder of --dataset_name; with --train_dir / "
                             "--validation_dir put the folders in one root (train/, val/) and pass it as "
                             "--dataset_name.")


@dataclass
class ModelArguments:
    """Which model to fine-tune."""

    model_name_or_path: str = field(default="google/vit-base-patch16-224-in21k", metadata={
        "help": "a transformers model id or folder, a timm name or a timm Hub repo (timm/..., hf-hub:...)"})
    pretrained: bool = field(default=False, metadata={
        "help": "a bare timm architecture name: load timm's pretrained weights (ids and folders always load theirs)"})
    model_revision: str | None = field(default=None, metadata={"help": "the Hub revision of the model"})
    image_processor_name: str | None = field(default=None, metadata={
        "help": "a transformers image processor id or folder, if not the model's own"})


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, DebiasTrainingArguments))
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 1 and args[0].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(json_file=args[0])
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=args)

    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    logger.info(f"Training/evaluation parameters {training_args}")
    set_seed(training_args.seed)

    # Load the data: columns image, labels and bias_labels, splits train / validation / test.
    columns = {"label_column": data_args.label_column_name, "bias_label_column": data_args.bias_label_column_name,
               "image_column": data_args.image_column_name}
    if data_args.dataset_name is not None:
        dataset = load_image_dataset(data_args.dataset_name, bias_csv=data_args.bias_csv, **columns)
    else:
        dataset = datasets.DatasetDict()
        for split, folder in (("train", data_args.train_dir), ("validation", data_args.validation_dir)):
            if folder is not None:
                with warnings.catch_warnings():  # each folder is one split: "no split information" is expected
                    warnings.filterwarnings("ignore", message=".*has no split information")
                    dataset[split] = load_image_dataset(folder, split_column="none", **columns)["train"]
    if "validation" not in dataset and "train" in dataset and data_args.train_val_split:
        split = dataset["train"].train_test_split(data_args.train_val_split, seed=training_args.seed)
        dataset["train"], dataset["validation"] = split["train"], split["test"]
    some_split = next(iter(dataset.values()))
    labels = some_split.features["labels"].names
    for name, split in dataset.items():
        if split.features["labels"].names != labels:
            raise ValueError(f"The {name} split has the classes {split.features['labels'].names}, the others "
                             f"{labels}: give both folders the same class folders.")
    if training_args.bias_label_column != "bias_labels" and "bias_labels" in some_split.column_names:
        dataset = dataset.rename_column("bias_labels", training_args.bias_label_column)

    # The model, with one output per class and the class names in its config.
    model = load_classifier(model_args.model_name_or_path, num_classes=len(labels), class_names=labels,
                            pretrained=model_args.pretrained, revision=model_args.model_revision)
    is_timm = isinstance(getattr(model, "pretrained_cfg", None), dict)
    image_processor = None if is_timm else load_image_processor(
        model_args.image_processor_name or model_args.model_name_or_path, revision=model_args.model_revision)

    # torchvision transforms from the image processor (RandomResizedCrop + flip for training, Resize + CenterCrop
    # for evaluation), or timm's from the model's data config.
    train_images, eval_images = train_eval_transforms(model, model_args.model_name_or_path,
                                                      processor=image_processor)
    keep = ("labels", training_args.bias_label_column)

    def transforms_with(to_pixels):
        def transform(batch):
            return {"pixel_values": to_pixels(batch["image"]), **{key: batch[key] for key in keep if key in batch}}
        return transform

    if training_args.do_train:
        if "train" not in dataset:
            raise ValueError("--do_train needs a train split.")
        if data_args.max_train_samples is not None:
            dataset["train"] = dataset["train"].shuffle(seed=training_args.seed).select(
                range(min(data_args.max_train_samples, len(dataset["train"]))))
        dataset["train"].set_transform(transforms_with(train_images))
    if training_args.do_eval:
        if "validation" not in dataset:
            raise ValueError("--do_eval needs a validation split.")
        if data_args.max_eval_samples is not None:
            dataset["validation"] = dataset["validation"].shuffle(seed=training_args.seed).select(
                range(min(data_args.max_eval_samples, len(dataset["validation"]))))
        dataset["validation"].set_transform(transforms_with(eval_images))
    training_args.remove_unused_columns = False  # the transform reads the image column

    trainer = DebiasTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset["train"] if training_args.do_train else None,
        eval_dataset=dataset["validation"] if training_args.do_eval else None,
        processing_class=image_processor,
    )  # default collator: pixel_values stacked, labels and bias labels as tensors; default metrics: group metrics

    metrics: dict[str, float] = {}
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    trainer.save_model()  # model, image processor and a card with the eval metrics; --push_to_hub: one commit
    return metrics


if __name__ == "__main__":
    main()
