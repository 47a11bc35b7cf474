"""Before/after reports: a text table for the terminal, a JSON file and a PNG bar chart."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

REPORT_METRICS = (
    ("unbiased_accuracy", "unbiased"),
    ("bias_conflicting_accuracy", "bias-conflicting"),
    ("biased_accuracy", "biased"),
    ("worst_group_accuracy", "worst group"),
)
"""The figures a report shows: result key and display name."""


def format_table(rows: Mapping[str, Mapping[str, float]], metrics: Sequence[tuple[str, str]] = REPORT_METRICS) -> str:
    """One line per model (``rows[name][metric]``, fractions shown as percentages)."""
    name_width = max([len(name) for name in rows] + [5])
    header = f"{'model':<{name_width}}  " + "  ".join(f"{label:>16}" for _, label in metrics)
    lines = [header, "-" * len(header)]
    for name, values in rows.items():
        cells = "  ".join(f"{100 * values[key]:>15.1f}%" if key in values else f"{'-':>16}" for key, _ in metrics)
        lines.append(f"{name:<{name_width}}  {cells}")
    return "\n".join(lines)


def write_report(output_dir: str | Path, rows: Mapping[str, Mapping[str, float]], *, title: str,
                 details: Mapping[str, object] | None = None,
                 metrics: Sequence[tuple[str, str]] = REPORT_METRICS, name: str = "report") -> tuple[Path, Path]:
    """Write ``<name>.json`` (rows + details) and ``<name>.png`` (grouped bars) into ``output_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    json_path, png_path = output / f"{name}.json", output / f"{name}.png"
    json_path.write_text(json.dumps({"title": title, "results": rows, **(details or {})}, indent=2) + "\n")

    shown = [(key, label) for key, label in metrics if all(key in values for values in rows.values())]
    fig, ax = plt.subplots(figsize=(1.9 * len(shown) + 2, 4), dpi=120)
    width = 0.8 / max(len(rows), 1)
    for index, (row_name, values) in enumerate(rows.items()):
        xs = [position + (index - (len(rows) - 1) / 2) * width for position in range(len(shown))]
        heights = [100 * values[key] for key, _ in shown]
        bars = ax.bar(xs, heights, width=width, label=row_name)
        ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
    ax.set_xticks(range(len(shown)), [label for _, label in shown])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 110)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return json_path, png_path
