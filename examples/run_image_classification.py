"""Fine-tune an image classifier with the transformers Trainer, plus one flag: ``--debias end``.

Compared with the transformers image-classification example, two names change: ``TrainingArguments`` ->
``DebiasTrainingArguments`` and ``Trainer`` -> ``DebiasTrainer``; the dataset needs a bias-label column.

    python examples/run_image_classification.py --output_dir out --debias end --end_alpha 10 \\
        --num_train_epochs 1 --per_device_train_batch_size 256 --use_cpu true --eval_strategy epoch
"""

from dataclasses import dataclass, field

import timm
import torch
from transformers import HfArgumentParser

from hf_debias import DebiasTrainer, DebiasTrainingArguments
from hf_debias.data import build_colour_digits


@dataclass
class ScriptArguments:
    model_name: str = field(default="simple_convnet", metadata={"help": "timm model name"})
    rho: float = field(default=0.99, metadata={"help": "Colour-Digits bias strength"})
    train_size: int = field(default=20_000, metadata={"help": "training images"})


def main() -> None:
    script_args, training_args = HfArgumentParser((ScriptArguments, DebiasTrainingArguments)).parse_args_into_dataclasses()
    dataset = build_colour_digits(script_args.rho, n_train=script_args.train_size, n_validation=1000, n_test=2000,
                                  image_size=16)
    model = timm.create_model(script_args.model_name, pretrained=False, num_classes=10)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))

    def preprocess(batch):
        batch["pixel_values"] = [transform(image.convert("RGB")) for image in batch["image"]]
        return batch

    def collate(rows):
        return {"pixel_values": torch.stack([row["pixel_values"] for row in rows]),
                "labels": torch.tensor([row["labels"] for row in rows]),
                "bias_labels": torch.tensor([row["bias_labels"] for row in rows])}

    training_args.remove_unused_columns = False
    trainer = DebiasTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset["train"].with_transform(preprocess),
        eval_dataset=dataset["test_unbiased"].with_transform(preprocess),
        data_collator=collate,
    )
    trainer.train()
    metrics = trainer.evaluate()  # accuracy, worst-group, unbiased, bias-aligned / conflicting accuracy
    trainer.log_metrics("eval", metrics)
    trainer.save_model()


if __name__ == "__main__":
    main()
