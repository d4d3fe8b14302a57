"""The suite's closing summary: derived figures per benchmark and the headline ratios, in the terminal and as Markdown."""

from __future__ import annotations

import os
from pathlib import Path

from embedsearch.fields import (BANDWIDTH_GBS, BARE_SECONDS, BYTES_VS_THEORY, CERTIFIED_FRACTION, FIELDS, GFLOPS,
                                GPU_PEAK_BYTES, IMAGES_PER_S, INDEX_BYTES, KNN_TOP1_CHANGE, MEAN_COSINE_TO_FP32,
                                OVERHEAD, PEAK_BYTES, PEAK_VS_MODEL, QUERIES_PER_S, RECALL, SPEC, TOP1, VECTORS_PER_S)

FIGURES = (  # extra_info field (embedsearch.fields), column title, format
    (IMAGES_PER_S, "images/s", "{:.1f}"),
    (VECTORS_PER_S, "vectors/s", "{:.0f}"),
    (QUERIES_PER_S, "queries/s", "{:.0f}"),
    (GFLOPS, "GFLOP/s", "{:.1f}"),
    (BANDWIDTH_GBS, "GB/s", "{:.1f}"),
    (RECALL, "recall@k", "{:.4f}"),
    (CERTIFIED_FRACTION, "certified", "{:.4f}"),
    (MEAN_COSINE_TO_FP32, "cos to fp32", "{:.5f}"),
    (KNN_TOP1_CHANGE, "top-1 change", "{:+.4f}"),
    (TOP1, "top-1", "{:.4f}"),
    (INDEX_BYTES, "index MiB", None),
    (BYTES_VS_THEORY, "bytes/theory", "{:.3f}"),
    (PEAK_BYTES, "peak MiB", None),
    (PEAK_VS_MODEL, "peak/model", "{:.3f}"),
    (GPU_PEAK_BYTES, "GPU peak MiB", None),
    (OVERHEAD, "overhead", "{:+.2%}"),
)


def _format(key: str, value, pattern: str | None) -> str:
    if FIELDS[key].unit == "bytes":
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
    matmul = next((b.extra_info[GFLOPS] for b in benchmarks if b.name.startswith("test_matmul_gflops")), None)
    for bench in benchmarks:
        info = bench.extra_info
        if bench.name.startswith("test_brute_force") and info.get(SPEC) == "Flat" and matmul:
            lines.append(f"{bench.name}: FAISS Flat {info[GFLOPS]:.1f} GFLOP/s = "
                         f"{info[GFLOPS] / matmul:.1%} of matmul {matmul:.1f} GFLOP/s")
            twin = by_name.get(bench.name.replace("[Flat-", "[TorchFlat-"))
            if twin is not None:
                lines.append(f"{twin.name}: torch / FAISS median time = {twin.stats.median / bench.stats.median:.3f}")
            bf16 = by_name.get(bench.name.replace("[Flat-", "[TorchFlat.bf16-"))
            if bf16 is not None:
                lines.append(f"{bf16.name}: speed-up over FAISS Flat = {bench.stats.median / bf16.stats.median:.2f}x "
                             f"(median times), certified fraction {bf16.extra_info[CERTIFIED_FRACTION]:.4f}")
        if OVERHEAD in info:
            lines.append(f"{bench.name}: timed call adds {info[OVERHEAD]:+.2%} to a "
                         f"{info[BARE_SECONDS] * 1e3:.2f} ms operation (bare loop median)")
    return lines
