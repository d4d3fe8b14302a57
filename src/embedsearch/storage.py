"""Saved benchmark runs (pytest-benchmark JSON): save atomically, load robustly.

A run is the JSON pytest-benchmark writes, with every round's time (`stats.data`), each
benchmark's `extra_info`, and the suite's additions: `machine_info["calibration"]` (matmul
GFLOP/s, copy GB/s) and `embedsearch` (tier, threads, devices, scaling exponents).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from .files import process_running, write_atomically

RUN_NAME = re.compile(r"^(\d{4})_.*\.json$")
CLAIM_PREFIX = ".claim-"  # + run number; holds the writer's pid while it saves


@dataclass
class Run:
    """One saved run: its file (None when in memory) and its JSON."""

    data: dict
    path: Path | None = None

    @property
    def benchmarks(self) -> dict[str, dict]:
        """Benchmarks by name (pytest's test id)."""
        return {bench["name"]: bench for bench in self.data["benchmarks"]}

    @property
    def datetime(self) -> str:
        return self.data.get("datetime", "")

    @property
    def commit(self) -> str:
        info = self.data.get("commit_info") or {}
        commit = (info.get("id") or "unknown")[:10]
        return commit + ("+dirty" if info.get("dirty") else "")

    @property
    def calibration(self) -> dict[str, float]:
        return (self.data.get("machine_info") or {}).get("calibration") or {}

    @property
    def suite(self) -> dict:
        return self.data.get("embedsearch") or {}

    @property
    def label(self) -> str:
        return str(self.path) if self.path is not None else "(this run)"


class RunFileError(ValueError):
    """A saved run that cannot be read; the message names the file."""


def load_run(path: str | Path) -> Run:
    """Read one saved run, or raise RunFileError naming the file and what is wrong with it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFileError(f"{path}: not a readable pytest-benchmark JSON file ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise RunFileError(f"{path}: expected a pytest-benchmark JSON object with a 'benchmarks' list")
    for bench in data["benchmarks"]:
        if not isinstance(bench, dict) or "name" not in bench or "median" not in (bench.get("stats") or {}):
            raise RunFileError(f"{path}: a benchmark entry lacks 'name' or 'stats.median'")
    return Run(data, path)


def run_files(locations: list[str | Path]) -> list[Path]:
    """The run files named: files as given, folders searched recursively for *.json."""
    files = []
    for location in map(Path, locations):
        if location.is_dir():
            files += sorted(location.rglob("*.json"))
        elif location.is_file():
            files.append(location)
        else:
            raise FileNotFoundError(f"{location}: no such run file or folder")
    return files


def load_runs(locations: list[str | Path]) -> list[Run]:
    """Every readable run under `locations`, oldest first; unreadable files are skipped with a warning."""
    runs = []
    for path in run_files(locations):
        try:
            runs.append(load_run(path))
        except RunFileError as error:
            warnings.warn(f"skipping {error}", stacklevel=2)
    return sorted(runs, key=lambda run: (run.datetime, str(run.path)))


def latest_run(location: str | Path) -> Run:
    """The run in a file, or the newest readable run in a folder."""
    runs = load_runs([location])
    if not runs:
        raise RunFileError(f"{location}: holds no readable saved run")
    return runs[-1]


def save_run(data: dict, folder: str | Path, name: str) -> Path:
    """Write a run as `folder/NNNN_<name>.json` (pytest-benchmark's naming) and return its path.

    Atomic (`files.write_atomically`, exclusive): the JSON is written and flushed to a temporary
    file, then hard-linked under its final name, which fails rather than overwrite; so a reader
    never sees half a file, an interrupted save leaves no run behind, and concurrent saves each get
    their own number, whatever their names (the number alone decides: `NNNN_*` taken under any name
    counts as taken). Number claims left by writers that died (their pid no longer runs) are removed first.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_claims(folder)
    text = json.dumps(data, indent=4, default=str).encode()
    while True:
        number = max(_run_numbers(folder), default=0) + 1
        # The number is claimed by an exclusive marker first: two writers with different names
        # would otherwise link NNNN_a.json and NNNN_b.json under the same number. The marker
        # holds the writer's pid and goes once the run file holds the number.
        claim = folder / f"{CLAIM_PREFIX}{number:04d}"
        try:
            descriptor = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue  # another writer holds this number
        try:
            os.write(descriptor, str(os.getpid()).encode())
            os.close(descriptor)
            if any(folder.glob(f"{number:04d}_*.json")):
                continue  # taken meanwhile by a writer that already released its claim
            return write_atomically(folder / f"{number:04d}_{name}.json", lambda stream: stream.write(text),
                                    exclusive=True)
        finally:
            claim.unlink(missing_ok=True)


def _run_numbers(folder: Path) -> list[int]:
    """Numbers taken by saved runs or claimed by writers saving now."""
    numbers = []
    for file in folder.iterdir():
        if match := RUN_NAME.match(file.name):
            numbers.append(int(match.group(1)))
        elif file.name.startswith(CLAIM_PREFIX) and file.name[len(CLAIM_PREFIX):].isdigit():
            numbers.append(int(file.name[len(CLAIM_PREFIX):]))
    return numbers


def remove_stale_claims(folder: Path) -> list[Path]:
    """Delete the number claims of writers that died (their pid no longer runs); return them."""
    removed = []
    for claim in folder.glob(f"{CLAIM_PREFIX}*"):
        try:
            pid_text = claim.read_text().strip()
        except OSError:
            continue
        if pid_text.isdigit() and not process_running(int(pid_text)):
            claim.unlink(missing_ok=True)
            removed.append(claim)
    return removed
