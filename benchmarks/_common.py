"""What every benchmark shares: the common flags, the provenance header and writing the JSON results."""

from __future__ import annotations

import argparse
import json
import platform
import sys
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
