"""Speed of EnD, measured side by side in one run (ratios, not absolute targets).

1. The penalty's forward + backward: ``hf_debias.functional.end_penalty`` (vectorised) against a
   loop-over-classes implementation in the style of the official code, at batch 256 with 10 targets x 10 bias
   values. Target: >= 100x faster.
2. A full training step (forward, backward, Adam step) of a timm ResNet with and without EnD at the pooled
   features. Target: <= 2 % overhead.

Timings alternate between the two variants and report medians, so that drifts in machine load hit both.

    python benchmarks/end_speed.py            # full run (~2 min on 2 CPU cores)
    python benchmarks/end_speed.py --quick    # smoke run, used by the tests
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_common_arguments, header, write_json  # noqa: E402
from hf_debias import EnDConfig, get_debias_model
from hf_debias.functional import end_penalty


def loop_over_classes_penalty(features, targets, bias_labels, alpha=1.0, beta=1.0, pairing="reference"):
    """EnD with Python loops over bias classes and (target, bias, other bias) triples, as the official code;
    ``pairing="all"`` visits every ordered pair of bias values instead of only ``b < b'``."""
    unit = F.normalize(features.reshape(features.shape[0], -1), dim=1)
    gram = torch.tril(unit @ unit.T, diagonal=-1).clamp(-1, 1)
    ortho, n_same = gram.new_zeros(()), 0.0
    bias_values = torch.unique(bias_labels)
    for value in bias_values:
        mask = (bias_labels == value).float()[:, None]
        mask = torch.tril(mask @ mask.T, diagonal=-1)
        count = mask.sum()
        n_same += count
        if count > 0:
            ortho = ortho + (gram * mask).sum().abs()
    ortho = ortho / n_same if n_same > 0 else ortho
    par, n_par = gram.new_zeros(()), 0.0
    for target in torch.unique(targets):
        class_mask = (targets == target).float()[:, None]
        for index, value in enumerate(bias_values):
            bias_mask = (bias_labels == value).float()[:, None]
            others = bias_values[index + 1:] if pairing == "reference" else bias_values[bias_values != value]
            for other in others:
                other_mask = (bias_labels == other).float()[:, None]
                mask = torch.tril((class_mask * bias_mask) @ (class_mask * other_mask).T, diagonal=-1)
                count = mask.sum()
                n_par += count
                if count > 0:
                    par = par - ((1.0 + gram) * mask * 0.5).sum()
    par = 1.0 + par / n_par if n_par > 0 else par
    return alpha * ortho + beta * par


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timing covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_alternating(functions: dict, repeats: int, warmup: int = 3,
                     device: torch.device = torch.device("cpu")) -> dict[str, float]:
    """Median seconds per call of each function, calling them in turn ``repeats`` times."""
    for function in functions.values():
        for _ in range(warmup):
            function()
    samples = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            synchronize(device)
            start = time.perf_counter()
            function()
            synchronize(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def penalty_benchmark(batch: int, dim: int, repeats: int, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(batch, dim, generator=generator).to(device)
    targets = torch.randint(0, 10, (batch,), generator=generator).to(device)
    bias = torch.randint(0, 10, (batch,), generator=generator).to(device)

    def run(function):
        def call():
            x = features.clone().requires_grad_(True)
            function(x, targets, bias).backward()
        return call

    results = {"batch": batch, "dim": dim, "targets": 10, "bias_values": 10}
    for pairing in ("all", "reference"):
        # Same numbers first, then time both side by side.
        torch.testing.assert_close(end_penalty(features, targets, bias, pairing=pairing),
                                   loop_over_classes_penalty(features, targets, bias, pairing=pairing),
                                   atol=1e-5, rtol=1e-5)
        times = time_alternating({
            "vectorised": run(lambda x, y, b: end_penalty(x, y, b, pairing=pairing)),
            "loop_over_classes": run(lambda x, y, b: loop_over_classes_penalty(x, y, b, pairing=pairing)),
        }, repeats, device=device)
        results[pairing] = {"seconds": times, "speedup": times["loop_over_classes"] / times["vectorised"]}
    return results


def training_step_benchmark(model_name: str, image_size: int, batch: int, repeats: int,
                            device: torch.device) -> dict:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, image_size, image_size, generator=generator).to(device)
    y = torch.randint(0, 10, (batch,), generator=generator).to(device)
    b = torch.randint(0, 10, (batch,), generator=generator).to(device)
    vanilla = timm.create_model(model_name, pretrained=False, num_classes=10).to(device)
    debiased_base = timm.create_model(model_name, pretrained=False, num_classes=10).to(device)
    debiased_base.load_state_dict(vanilla.state_dict())
    debiased = get_debias_model(debiased_base, EnDConfig(alpha=1.0, beta=1.0))
    optimizers = {"vanilla": torch.optim.Adam(vanilla.parameters(), 1e-4),
                  "end": torch.optim.Adam(debiased.parameters(), 1e-4)}

    def vanilla_step():
        loss = F.cross_entropy(vanilla(x), y)
        optimizers["vanilla"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["vanilla"].step()

    def end_step():
        loss = debiased(x, labels=y, bias_labels=b).loss
        optimizers["end"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["end"].step()

    times = time_alternating({"vanilla": vanilla_step, "end": end_step}, repeats, warmup=2, device=device)
    return {"model": model_name, "image_size": image_size, "batch": batch, "seconds": times,
            "overhead_percent": 100 * (times["end"] / times["vanilla"] - 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256, help="penalty benchmark batch size")
    parser.add_argument("--dim", type=int, default=512, help="penalty benchmark feature size")
    parser.add_argument("--penalty-repeats", type=int, default=30, help="timed calls per penalty variant")
    parser.add_argument("--model", default="resnet18", help="timm model for the training-step benchmark")
    parser.add_argument("--image-size", type=int, default=64, help="training-step image side")
    parser.add_argument("--step-batch", type=int, default=64, help="training-step batch size")
    parser.add_argument("--step-repeats", type=int, default=30, help="timed steps per variant")
    parser.add_argument("--device", default="cpu", help="where to time (cpu, cuda)")
    add_common_arguments(parser, "end_speed")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.quick:
        args.penalty_repeats, args.step_repeats, args.image_size, args.step_batch = 3, 3, 32, 16
    results = {
        **header(args),
        "penalty": penalty_benchmark(args.batch, args.dim, args.penalty_repeats, device),
        "training_step": training_step_benchmark(args.model, args.image_size, args.step_batch, args.step_repeats,
                                                 device),
    }
    penalty, step = results["penalty"], results["training_step"]
    for pairing in ("all", "reference"):
        row = penalty[pairing]
        print(f"EnD penalty fwd+bwd, pairing={pairing}, batch {penalty['batch']}, dim {penalty['dim']}, 10x10 "
              f"groups: vectorised {1e3 * row['seconds']['vectorised']:.2f} ms vs loop-over-classes "
              f"{1e3 * row['seconds']['loop_over_classes']:.1f} ms -> {row['speedup']:.0f}x (target >= 100x)")
    print(f"{step['model']} training step, batch {step['batch']} at {step['image_size']}px: vanilla "
          f"{1e3 * step['seconds']['vanilla']:.1f} ms vs EnD {1e3 * step['seconds']['end']:.1f} ms -> "
          f"{step['overhead_percent']:+.2f} % (target <= 2 %)")
    write_json(args.output, results)
    return results


if __name__ == "__main__":
    main()
