"""Before/after reports: text tables for the terminal (per model, per group), a JSON file and a PNG bar chart."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

REPORT_METRICS = (
    ("unbiased_accuracy", "unbiased"),
    ("bias_conflicting_accuracy", "bias-conflicting"),
    ("biased_accuracy", "biased"),
    ("worst_group_accuracy", "worst group"),
)
"""The figures a report shows: result key and display name."""

GROUP_METRICS = (
    ("accuracy", "accuracy"),
    ("unbiased_accuracy", "unbiased"),
    ("bias_aligned_accuracy", "bias-aligned"),
    ("bias_conflicting_accuracy", "bias-conflicting"),
    ("worst_group_accuracy", "worst group"),
)
"""The figures of a run evaluated with group metrics (``DebiasTrainer``'s keys without the ``eval_`` prefix)."""

Rows = Mapping[str, Mapping[str, float]]


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def format_table(rows: Rows, metrics: Sequence[tuple[str, str]] = REPORT_METRICS, *, name_header: str = "model",
                 ) -> str:
    """One line per row (``rows[name][metric]``, fractions shown as percentages; ``-`` where missing)."""
    name_width = max([len(name) for name in rows] + [len(name_header)])
    widths = [max(len(label), 7) for _, label in metrics]
    header = f"{name_header:<{name_width}}  " + "  ".join(f"{label:>{w}}" for (_, label), w in zip(metrics, widths))
    lines = [header, "-" * len(header)]
    for name, values in rows.items():
        cells = "  ".join(f"{100 * values[key]:>{w - 1}.1f}%" if _finite(values.get(key)) else f"{'-':>{w}}"
                          for (key, _), w in zip(metrics, widths))
        lines.append(f"{name:<{name_width}}  {cells}")
    return "\n".join(lines)


def format_group_table(groups: Sequence[Mapping[str, object]], *, class_names: Sequence[str] | None = None,
                       bias_names: Sequence[str] | None = None, worst: tuple[int, int] | None = None,
                       max_rows: int = 20, bias_header: str = "bias") -> str:
    """One line per (class, bias) group: class and bias name, count, accuracy, aligned / conflicting, the worst
    group marked. ``groups`` are ``hf_debias.metrics.group.groups_from_metrics`` rows; ``worst`` is
    ``(label, bias)`` of the worst group (default: the lowest accuracy). With more than ``max_rows`` groups only
    the ``max_rows`` worst are shown. ``bias_header`` names the bias column (e.g. the dataset's ``place``)."""
    if not groups:
        return "(no groups)"

    def name(names, index):
        return str(names[index]) if names is not None and 0 <= index < len(names) else str(index)

    if worst is None:
        low = min(groups, key=lambda row: row["accuracy"])
        worst = (low["label"], low["bias"])
    shown = list(groups)
    note = ""
    if len(shown) > max_rows:
        shown = sorted(shown, key=lambda row: (row["accuracy"], row["label"], row["bias"]))[:max_rows]
        shown.sort(key=lambda row: (row["label"], row["bias"]))
        note = f"\n(the {max_rows} worst of {len(groups)} groups; all of them are in report.json)"
    cells = [(name(class_names, row["label"]), name(bias_names, row["bias"]), f"{row['count']}",
              f"{100 * row['accuracy']:.1f}%",
              {True: "aligned", False: "conflicting"}.get(row.get("aligned"), "-"),
              "<- worst" if (row["label"], row["bias"]) == tuple(worst) else "") for row in shown]
    headers = ("class", bias_header, "count", "accuracy", "group", "")
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    right = (False, False, True, True, False, False)

    def line(values):
        return "  ".join(f"{v:>{w}}" if r else f"{v:<{w}}" for v, w, r in zip(values, widths, right)).rstrip()

    header = line(headers)
    return "\n".join([header, "-" * len(header), *(line(c) for c in cells)]) + note


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_report(output_dir: str | Path, rows: Rows | None = None, *, title: str,
                 details: Mapping[str, object] | None = None,
                 metrics: Sequence[tuple[str, str]] = REPORT_METRICS, name: str = "report",
                 panels: Mapping[str, Rows] | None = None) -> tuple[Path, Path]:
    """Write ``<name>.json`` (rows + details) and ``<name>.png`` (grouped bars) into ``output_dir``.

    ``rows`` (``{row: {metric: value}}``) give one chart with one bar per row and metric; ``panels``
    (``{panel: rows}``, e.g. one per eval split, rows ``before`` / ``after``) give one chart per panel side by side.
    Only the metrics every row of a panel has (finite) are drawn; ``NaN`` is written to the JSON as ``null``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if (rows is None) == (panels is None):
        raise ValueError("write_report needs exactly one of rows and panels.")
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    json_path, png_path = output / f"{name}.json", output / f"{name}.png"
    results = rows if rows is not None else panels
    json_path.write_text(json.dumps(_json_safe({"title": title, "results": results, **(details or {})}),
                                    indent=2) + "\n")

    charts = {"": rows} if rows is not None else dict(panels)
    shown = {panel: [(key, label) for key, label in metrics
                     if panel_rows and all(_finite(values.get(key)) for values in panel_rows.values())]
             for panel, panel_rows in charts.items()}
    widest = max([len(keys) for keys in shown.values()] + [1])
    names = list(dict.fromkeys(row_name for panel_rows in charts.values() for row_name in panel_rows))
    colour = {row_name: f"C{index % 10}" for index, row_name in enumerate(names)}  # the same row, the same colour
    panel_width = 1.9 * widest + 2 if len(charts) == 1 else 1.4 * widest + 1.5
    fig, axes = plt.subplots(1, len(charts), figsize=(len(charts) * panel_width, 4), dpi=120, squeeze=False)
    for ax, (panel, panel_rows) in zip(axes[0], charts.items()):
        keys = shown[panel]
        width = 0.8 / max(len(panel_rows), 1)
        for index, (row_name, values) in enumerate(panel_rows.items()):
            xs = [position + (index - (len(panel_rows) - 1) / 2) * width for position in range(len(keys))]
            bars = ax.bar(xs, [100 * values[key] for key, _ in keys], width=width, label=row_name,
                          color=colour[row_name])
            ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
        ax.set_xticks(range(len(keys)), [label for _, label in keys])
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 110)
        ax.set_title(f"{title}\n{panel}" if panel and len(charts) == 1 else (panel or title), fontsize=10)
        if keys and panel_rows:
            ax.legend(loc="upper left", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    if rows is None and len(charts) > 1:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return json_path, png_path
