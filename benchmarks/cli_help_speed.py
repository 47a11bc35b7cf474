"""How long ``--help`` takes for ``hf-debias`` and each of its commands, and which heavy libraries it imports.

Each timing is ``python -m hf_debias.cli [COMMAND] --help`` in a fresh subprocess (wall clock, imports included);
the figure is the median of ``--runs`` runs (1 with ``--quick``). Target: under 2 s for every command. A second,
untimed run per command lists which of torch / timm / transformers / datasets were imported to print the help.

    python benchmarks/cli_help_speed.py            # median of 3 runs per command, ~1 min
    python benchmarks/cli_help_speed.py --quick    # 1 run per command
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_json  # noqa: E402

COMMANDS = ("", "demo", "layers", "cav", "train")
HEAVY = ("torch", "timm", "transformers", "datasets")
TARGET_S = 2.0
# Runs the command-line entry point as `python -m hf_debias.cli` does, then names the heavy modules it imported.
PROBE = """import runpy, sys
sys.argv = ["hf_debias.cli", *sys.argv[1:]]
try:
    runpy.run_module("hf_debias.cli", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
print("IMPORTED", ",".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""


def help_command(command: str) -> list[str]:
    return [sys.executable, "-m", "hf_debias.cli", *([command] if command else []), "--help"]


def time_help(command: str) -> float:
    start = time.perf_counter()
    subprocess.run(help_command(command), check=True, stdout=subprocess.DEVNULL, env=os.environ.copy())
    return time.perf_counter() - start


def imported_modules(command: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *([command] if command else []),
                             "--help"], check=True, capture_output=True, text=True)
    line = next(line for line in result.stderr.splitlines() if line.startswith("IMPORTED"))
    return [name for name in line.removeprefix("IMPORTED").strip().split(",") if name]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per command (the median is reported)")
    parser.add_argument("--quick", action="store_true", help="one run per command (used by the tests)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/cli_help_speed.json"),
                        help="where the JSON results go")
    args = parser.parse_args(argv)
    runs = 1 if args.quick else args.runs
    if runs < 1:
        parser.error(f"--runs must be at least 1, got {runs}")
    rows = {}
    for command in COMMANDS:
        seconds = [time_help(command) for _ in range(runs)]
        name = f"hf-debias {command} --help".replace("  ", " ")
        rows[name] = {"median_s": statistics.median(seconds), "runs_s": seconds,
                      "imports": imported_modules(command), "under_target": statistics.median(seconds) < TARGET_S}
        print(f"{name:<26} {rows[name]['median_s']:5.2f} s  (runs: {', '.join(f'{s:.2f}' for s in seconds)}; "
              f"imports: {', '.join(rows[name]['imports']) or 'none of ' + '/'.join(HEAVY)})")
    results = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
               "python": platform.python_version(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
               "runs": runs, "target_s": TARGET_S, "help": rows}
    write_json(args.output, results)
    print(f"Results: {args.output}")
    return results


if __name__ == "__main__":
    main()
