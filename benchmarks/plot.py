"""Draw kept kernel-benchmark runs: GB/s and % of the copy bandwidth per kernel and shape.

    python benchmarks/plot.py benchmarks/results/<run>.json [<run>.json ...] -o speed.png

Reads pytest-benchmark JSONs written by benchmarks/test_kernel_speed.py (``--benchmark-json``;
benchmarks/run_gpu.sh keeps one per GPU run) and draws, for cross-entropy, one row per direction
(forward; forward + backward) of two panels: the bandwidth achieved against the 2-pass floor
(GB/s) and that as a percentage of the copy bandwidth measured in the same run; one bar per
kernel, grouped by shape and dtype. The fused projection + loss, when present, gets a row of
TFLOP/s (forward; forward + backward). With several runs, each bar's label names its run (card, date of the run). Needs
matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DIRECTIONS = ("forward", "forward+backward")


def load(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Every kernel benchmark of the runs, as its extra_info plus the run's label."""
    entries = []
    for path in paths:
        run = json.loads(path.read_text(encoding="utf-8"))
        for benchmark in run["benchmarks"]:
            info = benchmark.get("extra_info", {})
            if "family" not in info or "median_ms" not in info:
                continue  # the oracle's benchmarks, or a run with timing disabled
            card = info.get("card", "?")
            entries.append({**info, "run": f"{card}, {run.get('datetime', '')[:10]}"})
    return entries


def _bars(
    axis: Any, entries: list[dict[str, Any]], value: str, label_runs: bool, ylabel: str
) -> None:
    """Grouped bars: one group per shape and dtype, one bar per kernel (and run)."""
    cases = sorted({(e["shape"], e["dtype"]) for e in entries}, key=_case_order)
    series: dict[str, dict[tuple[str, str], float]] = defaultdict(dict)
    for entry in entries:
        name = f"{entry['kernel']} ({entry['run']})" if label_runs else entry["kernel"]
        series[name][(entry["shape"], entry["dtype"])] = entry[value]
    width = 0.8 / max(len(series), 1)
    for index, (name, values) in enumerate(sorted(series.items())):
        positions = [
            case_index + (index - (len(series) - 1) / 2) * width
            for case_index, case in enumerate(cases)
            if case in values
        ]
        heights = [values[case] for case in cases if case in values]
        axis.bar(positions, heights, width=width, label=name)
    axis.set_xticks(range(len(cases)))
    axis.set_xticklabels([f"{shape}\n{dtype}" for shape, dtype in cases], fontsize=8)
    axis.set_ylabel(ylabel)
    axis.grid(axis="y", alpha=0.3)


def _case_order(case: tuple[str, str]) -> tuple[int, str]:
    shape, dtype = case
    elements = 1
    for size in shape.split("x"):
        elements *= int(size)
    return elements, dtype


def draw(entries: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label_runs = len({e["run"] for e in entries}) > 1
    rows: list[tuple[str, list[dict[str, Any]]]] = []
    for direction in DIRECTIONS:
        chosen = [
            e for e in entries if e["family"] == "cross_entropy" and e["direction"] == direction
        ]
        if chosen:
            rows.append((f"cross_entropy, {direction}", chosen))
    linear = [e for e in entries if e["family"] == "linear" and "tflop_per_s" in e]
    if not rows and not linear:
        raise SystemExit("no kernel benchmarks with timings in these files")
    figure, axes = plt.subplots(
        len(rows) + bool(linear), 2, figsize=(14, 4.2 * (len(rows) + bool(linear))), squeeze=False
    )
    for (title, chosen), (bandwidth, fraction) in zip(rows, axes, strict=False):
        _bars(bandwidth, chosen, "gb_per_s", label_runs, "GB/s against the 2-pass floor")
        bandwidth.set_title(title)
        _bars(fraction, chosen, "percent_of_copy", label_runs, "% of copy bandwidth")
        fraction.set_title(f"{title}: % of y.copy_(x) bandwidth (same run)")
        fraction.legend(fontsize=7)
    if linear:
        for direction, axis in zip(DIRECTIONS, axes[-1], strict=True):
            chosen = [e for e in linear if e["direction"] == direction]
            if chosen:
                _bars(axis, chosen, "tflop_per_s", label_runs, "TFLOP/s")
                axis.set_title(f"linear_cross_entropy, {direction}")
                axis.legend(fontsize=7)
    figure.suptitle("; ".join(sorted({e["run"] for e in entries})))
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="pytest-benchmark JSON files")
    parser.add_argument("-o", "--out", type=Path, help="PNG to write (default: first run's .png)")
    arguments = parser.parse_args(argv)
    out = arguments.out or arguments.runs[0].with_suffix(".png")
    draw(load(arguments.runs), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
