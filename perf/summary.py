"""The suite's closing summary: derived figures per benchmark and the headline ratios, in the terminal and as Markdown."""

from __future__ import annotations

import os
from pathlib import Path

FIGURES = (  # extra_info key, column title, format
    ("images_per_s", "images/s", "{:.1f}"),
    ("vectors_per_s", "vectors/s", "{:.0f}"),
    ("queries_per_s", "queries/s", "{:.0f}"),
    ("gflops", "GFLOP/s", "{:.1f}"),
    ("bandwidth_gbs", "GB/s", "{:.1f}"),
    ("recall", "recall@k", "{:.4f}"),
    ("certified_fraction", "certified", "{:.4f}"),
    ("mean_cosine_to_fp32", "cos to fp32", "{:.5f}"),
    ("knn_top1_change", "top-1 change", "{:+.4f}"),
    ("top1", "top-1", "{:.4f}"),
    ("index_bytes", "index MiB", None),
    ("bytes_vs_theory", "bytes/theory", "{:.3f}"),
    ("peak_bytes", "peak MiB", None),
    ("peak_vs_model", "peak/model", "{:.3f}"),
    ("gpu_peak_bytes", "GPU peak MiB", None),
    ("overhead", "overhead", "{:+.2%}"),
)


def _format(key: str, value, pattern: str | None) -> str:
    if key in ("index_bytes", "peak_bytes", "gpu_peak_bytes"):
        return f"{value / 2**20:.2f}"
    return pattern.format(value) if isinstance(value, (int, float)) else str(value)


def print_summary(reporter, benchmarks, tier: str) -> None:
    """Print one line of derived figures per benchmark, then the headline ratios."""
    reporter.write_sep("-", f"embedsearch figures (tier {tier})")
    for bench in _in_order(benchmarks):
        info = bench.extra_info
        cells = [f"{title} {_format(key, info[key], pattern)}" for key, title, pattern in FIGURES if key in info]
        reporter.write_line(f"{bench.name:<78} {bench.stats.median * 1e3:10.2f} ms  " + "  ".join(cells))
    for line in headline_ratios(benchmarks):
        reporter.write_line(line)


def markdown_summary(benchmarks, tier: str) -> str:
    """The same figures as a Markdown table (a column per figure any benchmark has), then the headline ratios."""
    columns = [(key, title, pattern) for key, title, pattern in FIGURES
               if any(key in bench.extra_info for bench in benchmarks)]
    lines = [f"### embedsearch figures (tier {tier})", "",
             "| benchmark | median ms | " + " | ".join(title for _, title, _ in columns) + " |",
             "| --- | ---: |" + " ---: |" * len(columns)]
    for bench in _in_order(benchmarks):
        info = bench.extra_info
        cells = [_format(key, info[key], pattern) if key in info else "" for key, _, pattern in columns]
        lines.append(f"| `{bench.name}` | {bench.stats.median * 1e3:.2f} | " + " | ".join(cells) + " |")
    ratios = headline_ratios(benchmarks)
    return "\n".join(lines + ([""] + [f"- {line}" for line in ratios] if ratios else [])) + "\n"


def write_markdown_summary(reporter, benchmarks, tier: str, path: str | None) -> None:
    """Write `markdown_summary` to `path` (--perf-markdown) and append it to $GITHUB_STEP_SUMMARY when that is set."""
    text = markdown_summary(benchmarks, tier)
    if path:
        Path(path).write_text(text, encoding="utf-8")
        reporter.write_line(f"figures as Markdown: {path}")
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as summary:
            summary.write(text)


def _in_order(benchmarks) -> list:
    return sorted(benchmarks, key=lambda b: (b.group or "", b.name))


def headline_ratios(benchmarks) -> list[str]:
    """Exact-search GFLOP/s against the matmul calibration, torch and bf16 vs FAISS time, suite overhead."""
    lines = []
    by_name = {bench.name: bench for bench in benchmarks}
    matmul = next((b.extra_info["gflops"] for b in benchmarks if b.name.startswith("test_matmul_gflops")), None)
    for bench in benchmarks:
        info = bench.extra_info
        if bench.name.startswith("test_brute_force") and info.get("spec") == "Flat" and matmul:
            lines.append(f"{bench.name}: FAISS Flat {info['gflops']:.1f} GFLOP/s = "
                         f"{info['gflops'] / matmul:.1%} of matmul {matmul:.1f} GFLOP/s")
            twin = by_name.get(bench.name.replace("[Flat-", "[TorchFlat-"))
            if twin is not None:
                lines.append(f"{twin.name}: torch / FAISS median time = {twin.stats.median / bench.stats.median:.3f}")
            bf16 = by_name.get(bench.name.replace("[Flat-", "[TorchFlat.bf16-"))
            if bf16 is not None:
                lines.append(f"{bf16.name}: speed-up over FAISS Flat = {bench.stats.median / bf16.stats.median:.2f}x "
                             f"(median times), certified fraction {bf16.extra_info['certified_fraction']:.4f}")
        if "overhead" in info:
            lines.append(f"{bench.name}: timed call adds {info['overhead']:+.2%} to a "
                         f"{info['bare_seconds'] * 1e3:.2f} ms operation (bare loop median)")
    return lines
