"""Saved runs for tests: pytest-benchmark's JSON layout built from round times."""

import json

import numpy as np

from embedsearch.storage import Run


def make_run(benchmarks: dict[str, tuple[np.ndarray, dict]], node: str = "machine-a", matmul_gflops: float = 400.0,
             scaling: list[dict] | None = None, datetime: str = "2026-11-24T10:00:00") -> Run:
    """A run in pytest-benchmark's JSON layout: name -> (round times in seconds, extra_info)."""
    entries = []
    for name, (rounds, extra_info) in benchmarks.items():
        rounds = np.asarray(rounds, dtype=float)
        stats = {"min": rounds.min(), "max": rounds.max(), "mean": rounds.mean(), "stddev": rounds.std(),
                 "median": float(np.median(rounds)), "q1": float(np.quantile(rounds, 0.25)),
                 "q3": float(np.quantile(rounds, 0.75)), "rounds": len(rounds), "data": rounds.tolist()}
        entries.append({"group": None, "name": name, "fullname": f"perf/bench_x.py::{name}", "params": None,
                        "param": None, "extra_info": extra_info, "options": {}, "stats": stats})
    data = {"machine_info": {"node": node, "cpu": {"brand_raw": "cpu", "count": 2},
                             "calibration": {"matmul_gflops": matmul_gflops}},
            "commit_info": {"id": "abcdef1234567", "dirty": False}, "benchmarks": entries, "datetime": datetime,
            "version": "5.2.3", "embedsearch": {"tier": "smoke", "scaling": scaling or []}}
    return Run(json.loads(json.dumps(data)))


def noisy(median: float, rounds: int = 50, seed: int = 0, spread: float = 0.03) -> np.ndarray:
    return median * np.exp(np.random.default_rng(seed).normal(0, spread, rounds))
