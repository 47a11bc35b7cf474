"""Time per training step of the Trainer path (``DebiasTrainer``) against the plain-loop path (``DebiasModel``
+ AdamW), on the same model, data, batch size, optimizer and DataLoader, with EnD on; and the penalty's own cost
(plain loop with EnD vs without). Target: the Trainer path adds <= 5 % on top of the plain EnD loop.

The first steps of each run are warm-up and are not timed. Runs alternate between the two paths.

    python benchmarks/trainer_overhead.py           # ~2 min on 2 CPU cores
    python benchmarks/trainer_overhead.py --quick   # smoke run, used by the tests
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_common_arguments, header, write_json  # noqa: E402
from hf_debias import EnDConfig, get_debias_model
from hf_debias.trainer import DebiasTrainer, DebiasTrainingArguments


class TensorRows(Dataset):
    """Rows of in-memory tensors as dicts (what a transformed datasets.Dataset yields)."""

    def __init__(self, n: int, size: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.pixel_values = torch.randn(n, 3, size, size, generator=generator)
        self.labels = torch.randint(0, 10, (n,), generator=generator)
        self.bias_labels = torch.randint(0, 10, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixel_values[index], "labels": self.labels[index],
                "bias_labels": self.bias_labels[index]}


def collate(rows):
    return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}


class StepTimer(TrainerCallback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.end, self.steps = warmup, None, None, 0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self.start = time.perf_counter()
        self.end, self.steps = time.perf_counter(), state.global_step - self.warmup


def trainer_step_seconds(args, data) -> float:
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=10)
    timer = StepTimer(args.warmup)
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = DebiasTrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=args.batch, max_steps=args.warmup + args.steps,
            learning_rate=1e-3, lr_scheduler_type="constant", save_strategy="no", report_to=[], use_cpu=True,
            logging_steps=10_000, disable_tqdm=True, dataloader_num_workers=0, debias="end", end_alpha=1.0,
            end_beta=1.0, remove_unused_columns=False)
        trainer = DebiasTrainer(model=model, args=training_args, train_dataset=data, data_collator=collate,
                                callbacks=[timer])
        trainer.train()
    return (timer.end - timer.start) / timer.steps


def loop_step_seconds(args, data, debias: bool) -> float:
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=10)
    if debias:
        model = get_debias_model(model, EnDConfig(alpha=1.0, beta=1.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = DataLoader(data, batch_size=args.batch, shuffle=True, collate_fn=collate, drop_last=True)
    model.train()
    step, start = 0, None
    while step < args.warmup + args.steps:
        for batch in loader:
            if debias:
                loss = model(**batch).loss
            else:
                loss = torch.nn.functional.cross_entropy(model(batch["pixel_values"]), batch["labels"])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step == args.warmup:
                start = time.perf_counter()
            if step == args.warmup + args.steps:
                break
    return (time.perf_counter() - start) / args.steps


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="simple_convnet", help="timm model name (pretrained=False)")
    parser.add_argument("--image-size", type=int, default=16, help="image side")
    parser.add_argument("--batch", type=int, default=256, help="batch size")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    add_common_arguments(parser, "trainer_overhead")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.rounds, args.batch = 3, 1, 1, 32
    results = header(args)
    data = TensorRows(args.batch * (args.steps + args.warmup + 1), args.image_size)
    samples = {"loop_vanilla": [], "loop_end": [], "trainer_end": []}
    for _ in range(args.rounds):
        samples["loop_vanilla"].append(loop_step_seconds(args, data, debias=False))
        samples["loop_end"].append(loop_step_seconds(args, data, debias=True))
        samples["trainer_end"].append(trainer_step_seconds(args, data))
    seconds = {key: statistics.median(values) for key, values in samples.items()}
    results.update({
        "seconds_per_step": seconds,
        "samples": samples,
        "penalty_cost_percent": 100 * (seconds["loop_end"] / seconds["loop_vanilla"] - 1),
        "trainer_overhead_percent": 100 * (seconds["trainer_end"] / seconds["loop_end"] - 1),
    })
    print(f"{args.model}, batch {args.batch} at {args.image_size}px, ms/step: plain loop {1e3 * seconds['loop_vanilla']:.1f}"
          f" | plain loop + EnD {1e3 * seconds['loop_end']:.1f} ({results['penalty_cost_percent']:+.1f} %)"
          f" | DebiasTrainer + EnD {1e3 * seconds['trainer_end']:.1f} "
          f"({results['trainer_overhead_percent']:+.1f} % over the plain EnD loop; target <= 5 %)")
    write_json(args.output, results)
    return results


if __name__ == "__main__":
    main()
