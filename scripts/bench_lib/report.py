"""Results as a markdown table, JSON and a PNG chart, and the issue's targets checked against them.

Every figure is a median over runs.  Rate workloads show MB/s (10^6 bytes/s) with the median time;
the others show seconds.  Ratios are always speed ratios (higher is better for s3mount): MB/s over
MB/s, or the other's time over s3mount's.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench_lib.workloads import WORKLOADS, Sample, Sizes

TARGETS = ["s3mount", "boto3", "s3fs", "rclone"]
PEERS = ["s3fs", "rclone"]


def speed(name: str, samples: list[Sample], sizes: Sizes) -> float | None:
    """Median speed: MB/s for rate workloads, 1/seconds for the others (None if no sample)."""
    ok = [s.seconds for s in samples if s.error is None and s.seconds]
    if not ok:
        return None
    if WORKLOADS[name][1] == "rate":
        return statistics.median(sizes.big / 1e6 / t for t in ok)
    return 1.0 / statistics.median(ok)


def cell(name: str, samples: list[Sample] | None, sizes: Sizes) -> str:
    if samples is None:
        return "—"
    errors = [s.error for s in samples if s.error]
    value = speed(name, samples, sizes)
    if value is None:
        return f"error ({errors[0][:60]})" if errors else "—"
    ok = [s.seconds for s in samples if s.error is None and s.seconds]
    note = f" ({len(errors)} failed)" if errors else ""
    if WORKLOADS[name][1] == "rate":
        return f"{value:.0f} MB/s ({statistics.median(ok):.1f} s){note}"
    return f"{1 / value:.2f} s{note}"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "—"


def best_peer(name: str, results: dict[str, dict[str, list[Sample]]],
              sizes: Sizes) -> tuple[str | None, float | None]:
    best: tuple[str | None, float | None] = (None, None)
    for peer in PEERS:
        v = speed(name, results.get(name, {}).get(peer, []), sizes)
        if v is not None and (best[1] is None or v > best[1]):
            best = (peer, v)
    return best


def markdown_table(results: dict[str, dict[str, list[Sample]]], sizes: Sizes,
                   targets: list[str]) -> str:
    lines = ["| workload | s3mount | boto3 (raw) | s3fs | rclone | s3mount/boto3 | "
             "s3mount/best peer |", "|---|---|---|---|---|---|---|"]
    for name, (label, _) in WORKLOADS.items():
        if name not in results:
            continue
        row = results[name]
        cells = [cell(name, row.get(t) if t in targets else None, sizes) for t in TARGETS]
        mine = speed(name, row.get("s3mount", []), sizes)
        raw = speed(name, row.get("boto3", []), sizes)
        peer, peer_speed = best_peer(name, results, sizes)
        lines.append(f"| {label}, {sizes.describe(name)} | " + " | ".join(cells)
                     + f" | {ratio(mine, raw)} | {ratio(mine, peer_speed)}"
                     + (f" ({peer})" if peer else "") + " |")
    return "\n".join(lines)


def pool_lines(results: dict[str, dict[str, list[Sample]]]) -> list[str]:
    out = []
    for name, row in results.items():
        pool = [s.extra["pool10_seconds"] for s in row.get("boto3", [])
                if s.error is None and "pool10_seconds" in s.extra]
        if pool:
            out.append(f"- {WORKLOADS[name][0]}: raw boto3 with a 10-thread pool: "
                       f"{statistics.median(pool):.2f} s")
    return out


def request_lines(results: dict[str, dict[str, list[Sample]]]) -> list[str]:
    """Median requests per workload and contender, as the proxy counted them."""
    out = []
    for name, row in results.items():
        for target, samples in row.items():
            counted = [s.requests for s in samples if s.requests is not None and not s.error]
            if not counted:
                continue
            last = counted[len(counted) // 2]
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(last.items(), key=lambda kv: -kv[1])
                              if not k.startswith("_"))
            out.append(f"| {WORKLOADS[name][0]} | {target} | {last.get('_requests', 0)} | "
                       f"{kinds} |")
    if not out:
        return []
    return ["| workload | contender | requests | by kind |", "|---|---|---|---|", *out]


def cpu_lines(results: dict[str, dict[str, list[Sample]]]) -> list[str]:
    """Median wall and CPU seconds per workload and contender: who was busy while it ran."""
    out = []
    for name, row in results.items():
        for target, samples in row.items():
            ok = [s for s in samples if s.error is None and "bench_cpu_s" in s.extra]
            if not ok:
                continue

            def med(key: str, ok: list[Sample] = ok) -> str:
                values = [s.extra[key] for s in ok if key in s.extra]
                return f"{statistics.median(values):.1f}" if values else "—"

            wall = statistics.median(s.seconds for s in ok if s.seconds)
            out.append(f"| {WORKLOADS[name][0]} | {target} | {wall:.1f} | "
                       f"{med('daemon_cpu_s')} | {med('server_cpu_s')} | {med('bench_cpu_s')} |")
    if not out:
        return []
    return ["| workload | contender | wall s | mount daemon CPU s | server CPU s | "
            "bench process CPU s |", "|---|---|---|---|---|---|", *out]


def target_checks(results: dict[str, dict[str, list[Sample]]], sizes: Sizes,
                  latency: float) -> list[str]:
    def s(name: str, target: str) -> float | None:
        return speed(name, results.get(name, {}).get(target, []), sizes)

    def check(text: str, mine: float | None, other: float | None, factor: float) -> str:
        if mine is None or other is None:
            return f"- {text}: not measured"
        got = mine / other
        verdict = "met" if got >= factor else "**NOT met**"
        return f"- {text}: {got:.2f}x (target >= {factor}x): {verdict}"

    out = [check("cold sequential read vs raw boto3"
                 + (f" (with {latency:g} ms latency)" if latency else ""),
                 s("coldread", "s3mount"), s("coldread", "boto3"), 0.8 if latency else 0.9),
           check("write-until-durable vs raw boto3 multipart", s("seqwrite", "s3mount"),
                 s("seqwrite", "boto3"), 0.9)]
    for name, factor in (("coldread", 1.5), ("seqwrite", 1.5), ("create", 2.0), ("ls", 2.0)):
        out.append(check(f"{WORKLOADS[name][0]} vs the better of s3fs/rclone",
                         s(name, "s3mount"), best_peer(name, results, sizes)[1], factor))
    warm = s("warmread", "s3mount")
    if warm is not None:
        verdict = "met" if warm >= 1000 else "**NOT met**"
        out.append(f"- warm re-read: {warm:.0f} MB/s (target >= 1000 MB/s): {verdict}")
    return out


def to_json(results: dict[str, dict[str, list[Sample]]]) -> dict[str, Any]:
    return {name: {t: [vars(s) for s in samples] for t, samples in row.items()}
            for name, row in results.items()}


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")


def ensure_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        pass
    print(f"installing matplotlib into {sys.prefix} for the chart", file=sys.stderr)
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"],
                         capture_output=True, text=True)
    if res.returncode != 0:
        return False
    try:
        import matplotlib  # noqa: F401, F811
        return True
    except ImportError:
        return False


def write_chart(path: Path, results: dict[str, dict[str, list[Sample]]], sizes: Sizes,
                targets: list[str], title: str) -> str | None:
    """A PNG with one panel per workload; returns why it was skipped, or None."""
    if not ensure_matplotlib():
        return "matplotlib could not be installed from PyPI: no PNG chart"
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in WORKLOADS if n in results]
    cols = 3
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    colors = {"s3mount": "#1f77b4", "boto3": "#7f7f7f", "s3fs": "#ff7f0e", "rclone": "#2ca02c"}
    for ax, name in zip(axes.flat, names, strict=False):
        label, kind = WORKLOADS[name]
        shown = [t for t in TARGETS if t in targets and results[name].get(t)]
        values = []
        for t in shown:
            v = speed(name, results[name][t], sizes)
            values.append(0 if v is None else (v if kind == "rate" else 1 / v))
        bars = ax.bar(shown, values, color=[colors[t] for t in shown])
        for bar, v in zip(bars, values, strict=True):
            ax.annotate(f"{v:.0f}" if kind == "rate" else f"{v:.2f}",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_title(f"{label}\n{sizes.describe(name)}", fontsize=9)
        ax.set_ylabel("MB/s (higher is better)" if kind == "rate"
                      else "seconds (lower is better)", fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
