"""What every benchmark shares: the common flags, the provenance header and writing the JSON results."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

import hf_debias


def add_common_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run (used by the tests)")
    parser.add_argument("--output", type=Path, default=Path(f"benchmarks/results/{name}.json"),
                        help="where the JSON results go")


def header(args: argparse.Namespace) -> dict:
    """The command, versions, machine and settings that produced a result."""
    torch.set_num_threads(args.threads)
    return {"command": " ".join(sys.argv), "hf_debias": hf_debias.__version__, "torch": torch.__version__,
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "settings": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}}


def write_json(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")


def write_results(path: Path, results: dict, table: str) -> dict:
    """Print the Markdown ``table``, write ``results`` to ``path`` (JSON) and the table beside it (``.md``)."""
    print("\n" + table)
    write_json(path, results)
    path.with_suffix(".md").write_text(table)
    return results


def median_step_ms(models: dict, x: torch.Tensor, y: torch.Tensor, *, steps: int, batch_size: int,
                   masks: torch.Tensor | None = None) -> dict[str, float]:
    """Median ms per training step (forward, backward, Adam) of each ``hf_debias`` wrapper in ``models``, in
    alternating blocks of 5 steps in one process on the same random batches (the first block warms up), so that
    the ratios compare the models under the same machine load. ``masks`` reach a method that needs them (RRR)."""
    optimisers = {name: torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
                  for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    generator = torch.Generator().manual_seed(0)
    for block in range(2 * steps // 5 + 2):
        for name, model in models.items():
            model.train()
            for _ in range(5):
                index = torch.randint(0, x.shape[0], (batch_size,), generator=generator)
                start = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    loss = model(x[index], labels=y[index], masks=None if masks is None else masks[index]).loss
                optimisers[name].zero_grad(set_to_none=True)
                loss.backward()
                optimisers[name].step()
                if block > 0:
                    times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}
