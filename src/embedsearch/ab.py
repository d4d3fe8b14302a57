"""The A/B gate: run two revisions' suites in lockstep in one job and judge time on paired rounds.

Noise between jobs and machines (up to 1.7x here) cancels within a pair of rounds run seconds
apart; it does not cancel against a stored baseline. Method (asv `continuous`, RMIT, duet
benchmarking, Chromium Pinpoint):

1. Each side gets a git worktree (cached per commit) or, for HEAD, the working tree as it is; one
   long-lived pytest worker per side imports `embedsearch` and `perf/` from it and loads the
   `embedsearch_lockstep` plugin, which hands each benchmark's timed rounds to this controller.
2. Both sides collect; the benchmarks both hold run in the same order. For each, both sides set
   up, then batches of rounds (about `BATCH_SECONDS` each, the same iterations on both sides)
   alternate: a pair is one batch of each side, seconds apart, and pairs come in blocks of two,
   one in each order (base first, head first), the blocks' order random. Only the side being
   timed runs: the other is paused. The first block (WARMUP_PAIRS) is left out of the estimate:
   over this session's A/A and 10% runs a benchmark's first pair strayed from its median
   log-ratio by 22.5% on average, its second by 17.3%, later ones by 8-12%.
3. A pair's log-ratio is log(median head round / median base round). A pass's estimate is the
   crossover estimate over both orders with its standard error (`stats.crossover_estimate`)
   over `pairs` pairs (fewer, down to MIN_PAIRS, where that many would take more than
   BENCHMARK_SECONDS: the end-to-end benchmark, 1 s a round, took 28 s of a 235 s A/A run, set-up included).
   With `max_pairs` above `pairs`, a benchmark leaning slower by half the minimum effect without
   a clear within-pass verdict gets twice and four times as many, up to `max_pairs`.
   Pairs between the same two processes cannot reveal that the two processes differ for their
   whole life, and they do: over 5 A/A passes of the pr tier, FAISS Flat searches moved by
   7-14% (standard deviation) from one pair of workers to the next, against 0.4-1% within a pass
   (docs/ab-gate.md: "Process offsets, measured"). The offset comes with a set-up's memory: a
   set-up over memory never used before draws a new one, a set-up over freed memory keeps the old one
   (tools/probe_offsets.py). So a benchmark whose first-pass ratio passes 1 + SUSPECT_SHARE x
   min_effect (a suspect) is timed again in CONFIRMATIONS passes, each by a child that a new
   template worker per side forks after collecting, which sets everything up afresh with its own
   random layout padding (children of one template share its heap: a template serves one pass),
   and judged on those passes alone (`stats.across_passes`: a t-test over the
   passes' estimates, which carries each benchmark's own set-up-to-set-up spread). Suspects the
   first look leaves `undecided` (still leaning, not yet rejected by Benjamini-Hochberg, or
   rejected short of the minimum effect) get MORE_CONFIRMATIONS passes and a second look;
   `confirmed` takes Bonferroni over the looks. The first pass only selects:
   its estimate is biased upward by the selection, and the confirmation passes are independent
   of it, so each suspect's p-value holds whatever was selected. Every suspect is tested both
   ways, whichever way its first pass leaned (that lean can be its pair of processes' offset: 7
   of the 28 slowed benchmarks missed at 10% over 5646cd3's runs were suspects whose first pass
   leaned faster, tested for "faster" only): one-sided for "slower" in the slower family and for
   "faster" in the faster family, each family all the suspects, each through Benjamini-Hochberg
   at ALPHA. In an A/A run, where every suspect is a false one, the chance of any false
   regression (exit 1) is at most ALPHA, assuming the suspects' tests independent or positively
   dependent; with many real slowdowns it keeps more power than Bonferroni. A regression needs
   rejection and a confirmed ratio above 1 + min_effect; an improvement likewise in its family
   (so an A/A run may also report a false improvement, at most ALPHA more; an A/A run of the pr
   tier once reported 3 unconfirmed improvements, all process offsets). A benchmark without
   confirmation passes is "same" or "unsure", never slower or faster.
4. Deterministic figures (peak memory, index bytes, recall, top-1) of the two sides are compared
   with the stored-baseline gate's tolerances; a test that fails on the head side only is a
   regression. A scaling exponent's change is read from the paired ratios
   (`paired_exponent_changes`), with the stored gate's tolerance.
"""

from __future__ import annotations

import json
import math
import os
import queue
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, Listener
from pathlib import Path

import numpy as np

from .compare import Comparison, GateReport, Thresholds, compare_figures, figure, format_value
from .files import write_atomically
from .stats import PairedEstimate, across_passes, benjamini_hochberg, crossover_estimate, scaling_exponents
from .storage import Run, load_run, save_run

ALPHA = 0.05  # family-wise false-alarm rate of one gate run
MIN_EFFECT = 0.05  # measured: tools/measure_gate.py --gate ab (README)
PAIRS = 10  # pairs at the first look; with max_pairs above it, leaning benchmarks get 2x and 4x as many
# The first pass only selects suspects, and more pairs between the same two processes cannot see
# their offset (module docstring, step 3): by default it adds none (--max-pairs can).
MAX_PAIRS = PAIRS
MIN_PAIRS = 4  # two blocks: each order twice, the least that gives a standard error
BENCHMARK_SECONDS = 8.0  # a slow benchmark gets fewer pairs, down to MIN_PAIRS, to stay near this per pass
# Passes of forked workers that time the first pass's suspects again: 5 degrees of freedom. The
# offset, not the pairs, limits a pass: 6 passes of 4 pairs give a t with 5 degrees of freedom
# instead of 3 for 4 passes of 6 (one-sided 5%: 2.015 instead of 2.353).
CONFIRMATIONS = 6
CONFIRMATION_PAIRS = MIN_PAIRS
# Suspects the first look across passes leaves undecided (`undecided`) get this many more passes.
# Some FAISS Flat searches land on one of two levels ~15% apart per set-up: their passes spread
# too widely for 6 to confirm a 10% slowdown (docs/ab-gate.md: the 4baa142 misses).
MORE_CONFIRMATIONS = 12
LOOKS = 2 if MORE_CONFIRMATIONS else 1  # looks across passes (after CONFIRMATIONS, after all): Bonferroni over them
# A first-pass ratio beyond 1 + SUSPECT_SHARE x min_effect either way makes a suspect: at 4baa142
# 11 of the 20 slowed benchmarks missed at 10% never became suspects at 1 + min_effect.
SUSPECT_SHARE = 0.5
BATCH_SECONDS = 0.04  # rounds of one side per pair, at least one round
# one block of both orders run first and left out of the estimate (docs/ab-gate.md: "A benchmark's first pairs run cold")
WARMUP_PAIRS = 2
LOCKSTEP_PLUGIN = Path(__file__).resolve().parent / "lockstep"
LAYOUT_PADDING = 8192  # at most this many bytes of environment padding per worker (see Worker)
START_SECONDS = 600  # a worker that has not connected by then is reported as hung


class ABError(RuntimeError):
    """A gate run that cannot go on: bad revision, not a repository, collection error, interruption."""


@dataclass
class Side:
    """One revision under test: its label, commit, the tree its worker runs in."""

    role: str  # "base" or "head"
    revision: str  # as given, or "working tree"
    commit: str  # full hash, "+dirty" appended for a working tree with changes
    tree: Path
    imported_from: str = ""
    outcomes: dict[str, str] = field(default_factory=dict)


@dataclass
class PairedBenchmark:
    """Every pair of one benchmark: per pair, the order and each side's per-iteration round times (s)."""

    name: str
    iterations: dict[str, int]
    rounds_per_batch: int  # after the warm-up; the warm-up's batches were sized by the calibration
    pairs: list[dict] = field(default_factory=list)  # {"first": role, "base": [...], "head": [...]}
    warmup: list[dict] = field(default_factory=list)  # the same, run before `pairs` and not judged

    def log_ratios_by_order(self) -> tuple[np.ndarray, np.ndarray]:
        """log(median head round / median base round) of the pairs whose base ran first, then of the others."""
        def log_ratios(first: str) -> np.ndarray:
            return np.array([math.log(np.median(pair["head"]) / np.median(pair["base"]))
                             for pair in self.pairs if pair["first"] == first])
        return log_ratios("base"), log_ratios("head")


@dataclass
class ABResult:
    base: Side
    head: Side
    report: GateReport
    benchmarks: list[PairedBenchmark]
    confirmations: list[list[PairedBenchmark]]  # each confirmation pass's pairs: forked workers, suspects only
    added: list[str]
    removed: list[str]
    seconds: float
    first_pass_seconds: float  # the first pass, its workers' start and end included
    pass_seconds: list[float]  # each confirmation pass, its templates' start and end included
    saved: list[Path]
    settings: dict


def git(repository: Path, *arguments: str) -> str:
    """Output of a git command in `repository`, or ABError with git's message."""
    completed = subprocess.run(["git", "-C", str(repository), *arguments], capture_output=True, text=True)
    if completed.returncode != 0:
        raise ABError(f"git {' '.join(arguments)} in {repository}: {completed.stderr.strip() or completed.stdout.strip()}")
    return completed.stdout.strip()


def repository_root(folder: Path) -> Path:
    """The top of the git work tree holding `folder`, or ABError."""
    if not folder.is_dir():
        raise ABError(f"{folder}: no such folder")
    completed = subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if completed.returncode != 0:
        raise ABError(f"{folder}: not a git repository (embedsearch ab compares two git revisions of the project)")
    return Path(completed.stdout.strip())


def resolve_commit(repository: Path, revision: str) -> str:
    """The full commit hash of `revision`, or ABError naming it."""
    completed = subprocess.run(["git", "-C", str(repository), "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"],
                               capture_output=True, text=True)
    if completed.returncode != 0:
        raise ABError(f"unknown revision {revision!r}: expected a commit, branch or tag of {repository}")
    return completed.stdout.strip()


def worktree(repository: Path, commit: str) -> Path:
    """A clean worktree of `commit` under the repository's git folder, reused while it is intact."""
    common = Path(git(repository, "rev-parse", "--git-common-dir"))
    folder = (common if common.is_absolute() else repository / common) / "embedsearch-ab" / commit
    if folder.is_dir():
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True)
        status = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True)
        if head.returncode == 0 and head.stdout.strip() == commit and status.returncode == 0 and not status.stdout.strip():
            return folder
        subprocess.run(["git", "-C", str(repository), "worktree", "remove", "--force", str(folder)], capture_output=True)
    git(repository, "worktree", "prune")
    git(repository, "worktree", "add", "--detach", "--force", str(folder), commit)
    return folder


def make_side(repository: Path, role: str, revision: str | None) -> Side:
    """A side for `revision`, or for the working tree as it is (uncommitted changes included) when None."""
    if revision is None:
        commit = git(repository, "rev-parse", "HEAD")
        dirty = bool(git(repository, "status", "--porcelain", "--untracked-files=no"))
        return Side(role, "working tree", commit + ("+dirty" if dirty else ""), repository)
    commit = resolve_commit(repository, revision)
    return Side(role, revision, commit, worktree(repository, commit))


def declared_dependencies(side: Side) -> dict:
    """The `[project]` dependencies and extras a side's pyproject.toml declares ({} when it has none)."""
    path = side.tree / "pyproject.toml"
    if not path.is_file():
        return {}
    project = tomllib.loads(path.read_text(encoding="utf-8")).get("project", {})
    return {"dependencies": sorted(project.get("dependencies", [])),
            "optional-dependencies": {name: sorted(values) for name, values in
                                      sorted(project.get("optional-dependencies", {}).items())}}


class Worker:
    """One side's long-lived pytest process and its connection to the controller."""

    def __init__(self, side: Side, pytest_args: list[str], folder: Path, address: str, authkey: bytes,
                 environment: dict[str, str], template: bool = False):
        self.side = side
        self.template = template  # forks a child per plan (embedsearch_lockstep: EMBEDSEARCH_AB_FORK)
        self.json_path = folder / f"{side.role}.json"
        self.log_path = folder / f"{side.role}.log"
        python_path = [str(side.tree / "src"), str(LOCKSTEP_PLUGIN)]
        if os.environ.get("PYTHONPATH"):
            python_path.append(os.environ["PYTHONPATH"])
        if template:
            environment = dict(environment, EMBEDSEARCH_AB_FORK="1")
        env = dict(os.environ, **environment, PYTHONPATH=os.pathsep.join(python_path),
                   EMBEDSEARCH_AB_ADDRESS=address, EMBEDSEARCH_AB_AUTHKEY=authkey.hex(), EMBEDSEARCH_AB_SIDE=side.role,
                   # A random amount of environment shifts this process's stack and heap by a random offset
                   # (ASLR keeps offsets within a page), so a memory layout that happens to favour one side
                   # (its tree's path, its environment) is drawn afresh for every worker instead of biasing
                   # every pass alike (Mytkowicz et al., ASPLOS 2009; Curtsinger & Berger, ASPLOS 2013).
                   EMBEDSEARCH_AB_LAYOUT="." * secrets.randbelow(LAYOUT_PADDING))
        # without hypothesis's plugin, which a benchmark never uses and whose import took 1-1.5 s of each start
        command = [sys.executable, "-m", "pytest", "-p", "embedsearch_lockstep", "-p", "no:cacheprovider",
                   "-p", "no:hypothesispytest", "-q",
                   "--benchmark", f"--benchmark-json={self.json_path}", *pytest_args]
        with open(self.log_path, "wb") as log:
            # Its own process group: a terminal's Ctrl-C reaches the controller, which ends both workers.
            # Not its own session: the workers stay in the controller's scheduling autogroup.
            self.process = subprocess.Popen(command, cwd=side.tree, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, process_group=0)
        self.connection: Connection | None = None

    def send(self, *message) -> None:
        self.connection.send(message)

    def send_plan(self, plan: list[str]) -> None:
        """The ids to run, in order; a template's child also gets its own random layout padding (see __init__)."""
        self.send("plan", plan, *([secrets.randbelow(LAYOUT_PADDING)] if self.template else []))

    def receive(self, end_of_pass: bool = False) -> tuple:
        """The worker's next message; ABError if it died, or if a forked child ended before `end_of_pass`."""
        try:
            message = self.connection.recv()
        except (EOFError, ConnectionError, OSError):
            raise ABError(f"the {self.side.role} worker ended unexpectedly (exit {self.process.wait()}):\n"
                          + self.log_tail()) from None
        if (message[0] == "ended") != end_of_pass:
            raise ABError(f"the {self.side.role} worker sent {message[0]!r}"
                          + (f" (its pass's child exited with {message[1]})" if message[0] == "ended" else
                             ", expected the end of its pass") + ":\n" + self.log_tail())
        return message

    def log_tail(self, characters: int = 3000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-characters:]

    def pause(self) -> None:
        """Stop the worker's process group (SIGSTOP): its idle threads (OpenMP, OpenBLAS spin for up to
        ~0.1 s after a call) and child processes cannot take the CPU from the other side's rounds."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, number: int) -> None:
        # Only while the worker is not yet reaped: a reaped worker's process group id may be reused.
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, number)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        self.resume()  # a stopped process cannot act on SIGTERM
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, 15)
                self.process.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.process.pid, 9)
                except ProcessLookupError:
                    pass
                self.process.wait()
        if self.connection is not None:
            self.connection.close()


def connect(listener: Listener, workers: list[Worker]) -> None:
    """Accept both workers' connections, matched by the side each says hello with."""
    accepted: queue.Queue = queue.Queue()

    def accept() -> None:
        for _ in workers:
            try:
                connection = listener.accept()
                accepted.put((connection, connection.recv()))
            except (OSError, EOFError):
                return

    threading.Thread(target=accept, daemon=True).start()
    by_role = {worker.side.role: worker for worker in workers}
    deadline = time.monotonic() + START_SECONDS
    while any(worker.connection is None for worker in workers):
        for worker in workers:
            if worker.connection is None and worker.process.poll() is not None:
                raise ABError(f"the {worker.side.role} side ({worker.side.revision}) failed before collecting "
                              f"(pytest exit {worker.process.returncode}):\n{worker.log_tail()}")
        if time.monotonic() > deadline:
            raise ABError(f"a worker did not start within {START_SECONDS} s")
        try:
            connection, hello = accepted.get(timeout=0.2)
        except queue.Empty:
            continue
        worker = by_role[hello[1]]
        worker.connection, worker.side.imported_from = connection, hello[2]


def agree_on_plan(base: Worker, head: Worker, only: list[str] | None = None) -> tuple[list[str], list[str], list[str]]:
    """Both sides' collected ids: (planned in base order, added in head, removed from base), or ABError.

    `only` restricts the plan to those ids (a confirmation pass)."""
    collected = {}
    for worker in (base, head):
        message = worker.receive()
        if message[0] != "collected":
            raise ABError(f"the {worker.side.role} worker sent {message[0]!r} before its collection")
        ids, errors = message[1], message[2]
        if errors:
            raise ABError(f"pytest could not collect the {worker.side.role} side ({worker.side.revision}):\n"
                          + "\n".join(errors)[-4000:])
        collected[worker.side.role] = ids
    head_ids = set(collected["head"])
    plan = [nodeid for nodeid in collected["base"] if nodeid in head_ids and (only is None or nodeid in only)]
    added = sorted(head_ids - set(collected["base"]))
    removed = sorted(set(collected["base"]) - head_ids)
    if not plan:
        raise ABError(f"no benchmark in common: base collected {len(collected['base'])}, head "
                      f"{len(collected['head'])} (check the pytest arguments, e.g. -k)")
    for worker in (base, head):
        worker.send_plan(plan)
    return plan, added, removed


def run_pairs(workers: dict[str, Worker], nodeid: str, rng: random.Random, pairs: int, max_pairs: int,
              min_effect: float, alpha: float) -> PairedBenchmark:
    """Calibrate both sides, then alternate batches of rounds in random order until the verdict is clear.

    Only the side being timed is runnable: the other is paused (SIGSTOP) between its batches."""
    try:
        return paired_rounds(workers, nodeid, rng, pairs, max_pairs, min_effect, alpha)
    finally:
        for worker in workers.values():
            worker.resume()


REPLIES = {"calibrate": "calibrated", "rounds": "times"}  # a worker's reply to each timing command


def exchange(workers: dict[str, Worker], role: str, *command) -> tuple:
    """Send `command` to `role`'s worker with the other side paused; its reply, or ABError if the test ended instead."""
    for other, worker in workers.items():
        if other != role:
            worker.pause()
    workers[role].resume()
    workers[role].send(*command)
    reply = workers[role].receive()
    if reply[0] != REPLIES[command[0]]:
        detail = f"{reply[1]} {reply[2]}" if reply[0] == "finished" else repr(reply[0])
        raise ABError(f"the {role} worker ended its benchmark while being timed ({command[0]}): {detail}")
    return reply


def paired_rounds(workers: dict[str, Worker], nodeid: str, rng: random.Random, pairs: int, max_pairs: int,
                  min_effect: float, alpha: float) -> PairedBenchmark:
    calibration = {}
    for role in rng.sample(["base", "head"], 2):
        _, seconds, iterations, fixed = exchange(workers, role, "calibrate")
        calibration[role] = (seconds / iterations, iterations, fixed)
    shared = max(iterations for _, iterations, _ in calibration.values())
    iterations = {role: own if fixed else shared for role, (_, own, fixed) in calibration.items()}
    round_seconds = max(per_iteration * iterations[role] for role, (per_iteration, _, _) in calibration.items())
    benchmark = PairedBenchmark(nodeid, iterations, max(1, round(BATCH_SECONDS / max(round_seconds, 1e-9))))

    def block(into: list[dict]) -> None:
        """Two pairs, one in each order, the order of the two random."""
        for first in rng.sample(["base", "head"], 2):
            pair = {"first": first}
            for role in (first, "head" if first == "base" else "base"):
                pair[role] = exchange(workers, role, "rounds", iterations[role], benchmark.rounds_per_batch)[1]
            into.append(pair)

    while len(benchmark.warmup) < WARMUP_PAIRS:
        block(benchmark.warmup)
    # Size the batches from the warm rounds: calibration runs right after set-up, when a call can
    # take 10x its warm time, and batches sized from it were 2 ms long, shorter than a 4 ms stall.
    warm_round = max(float(np.median([time for pair in benchmark.warmup for time in pair[role]])) * iterations[role]
                     for role in ("base", "head"))
    benchmark.rounds_per_batch = max(1, round(BATCH_SECONDS / max(warm_round, 1e-9)))
    affordable = 2 * int(BENCHMARK_SECONDS / (4 * benchmark.rounds_per_batch * warm_round))  # whole blocks
    pairs, max_pairs = (min(count, max(MIN_PAIRS, affordable)) for count in (pairs, max_pairs))
    target = pairs
    while True:
        while len(benchmark.pairs) < target:
            block(benchmark.pairs)
        found = estimate(benchmark, alpha)
        # Only a possible regression earns more pairs: leaning slower by half the minimum effect, not yet proven.
        suspect = found.ratio > 1 + min_effect / 2 and time_verdict(found, min_effect) != "slower"
        if not suspect or target >= max_pairs:
            break
        target = min(2 * target, max_pairs)
    for worker in workers.values():
        worker.resume()
        worker.send("done")
    return benchmark


def time_verdict(estimate, min_effect: float) -> str:
    """slower / faster when the bound excludes 1 and the ratio passes 1 + min_effect; unsure when only the bound does."""
    if estimate.low > 1 and estimate.ratio > 1 + min_effect:
        return "slower"
    if estimate.high < 1 and estimate.ratio < 1 / (1 + min_effect):
        return "faster"
    if estimate.low > 1 or estimate.high < 1:
        return "unsure"
    return "same"


def looks(pairs: int, max_pairs: int) -> int:
    """How many times a benchmark may be judged: at pairs, 2·pairs, 4·pairs, ... up to max_pairs."""
    count, target = 1, pairs
    while target < max_pairs:
        target, count = min(2 * target, max_pairs), count + 1
    return count


@dataclass
class Session:
    """The first pass: a pair of started workers over every benchmark both sides hold."""

    paired: list[PairedBenchmark]
    added: list[str]
    removed: list[str]
    runs: dict[str, Run]
    alpha: float  # each look's level in this pass


@contextmanager
def started_workers(base: Side, head: Side, pytest_args: list[str], head_environment: dict[str, str],
                    template: bool = False):
    """One connected worker per side (templates that fork a child per plan when `template`), stopped on leaving."""
    with tempfile.TemporaryDirectory(prefix="embedsearch-ab-") as folder:
        authkey = secrets.token_bytes(16)
        listener = Listener(str(Path(folder) / "controller.sock"), family="AF_UNIX", authkey=authkey)
        workers: dict[str, Worker] = {}
        try:
            for side in (base, head):
                workers[side.role] = Worker(side, pytest_args, Path(folder), listener.address, authkey,
                                            head_environment if side is head else {}, template)
            connect(listener, list(workers.values()))
            if base.imported_from == head.imported_from and base.commit != head.commit:
                raise ABError(f"both sides import embedsearch from {base.imported_from}, but their commits differ "
                              f"({base.commit[:10]} and {head.commit[:10]}): the comparison would time one code twice")
            yield workers
        except KeyboardInterrupt:
            raise ABError("interrupted: both workers stopped; nothing was saved or removed") from None
        finally:
            for worker in workers.values():
                worker.stop()
            listener.close()


def pair_plan(workers: dict[str, Worker], plan: list[str], rng: random.Random, pairs: int, max_pairs: int,
              min_effect: float, alpha: float, log) -> list[PairedBenchmark]:
    """Pair every benchmark of the plan as both workers reach it; record each test's outcome per side."""
    paired = []
    for position, nodeid in enumerate(plan, 1):
        messages = {role: worker.receive() for role, worker in workers.items()}
        for role, message in messages.items():
            if message[1] != nodeid:
                raise ABError(f"the {role} worker is at {message[1]}, expected {nodeid}")
        if all(message[0] == "ready" for message in messages.values()):
            paired.append(run_pairs(workers, nodeid, rng, pairs, max_pairs, min_effect, alpha))
            log(f"[{position}/{len(plan)}] {nodeid}: {len(paired[-1].pairs)} pairs", flush=True)
        else:
            for role, message in messages.items():
                if message[0] == "ready":  # the other side skipped or failed before timing
                    workers[role].send("done")
        for role, message in messages.items():
            finished = message if message[0] == "finished" else workers[role].receive()
            workers[role].side.outcomes.setdefault(nodeid, finished[2])
    return paired


def run_session(base: Side, head: Side, pytest_args: list[str], rng: random.Random, pairs: int, max_pairs: int,
                min_effect: float, head_environment: dict[str, str], log) -> Session:
    """The first pass: start one worker per side, agree on the plan, pair every shared benchmark.

    Each look is tested at ALPHA / (benchmarks in the plan x looks).
    """
    with started_workers(base, head, pytest_args, head_environment) as workers:
        plan, added, removed = agree_on_plan(workers["base"], workers["head"])
        alpha = ALPHA / (len(plan) * looks(pairs, max_pairs))
        log(f"{len(plan)} benchmarks in the plan; each look tested at alpha = {ALPHA} / ({len(plan)} x "
            f"{looks(pairs, max_pairs)} looks) = {alpha:.2e}")
        paired = pair_plan(workers, plan, rng, pairs, max_pairs, min_effect, alpha, log)
        for worker in workers.values():
            if worker.process.wait() not in (0, 1):  # 1: a test failed, judged below
                raise ABError(f"the {worker.side.role} worker exited with {worker.process.returncode}:\n"
                              + worker.log_tail())
        runs = {role: load_run(worker.json_path) for role, worker in workers.items()}
    return Session(paired, added, removed, runs, alpha)


def run_confirmations(base: Side, head: Side, pytest_args: list[str], rng: random.Random, suspects: list[str],
                      min_effect: float, head_environment: dict[str, str], log
                      ) -> tuple[list[list[PairedBenchmark]], list[float]]:
    """CONFIRMATIONS passes over the suspects, then MORE_CONFIRMATIONS over those
    still `undecided`, each pass by new template workers, one per side, that collect and fork one
    child, which sets everything up afresh with its own layout padding and runs the pass. Returns
    each pass's pairs and its wall seconds.

    The templates are new for every pass: children of one template share its heap, and at 0fbaeaa,
    where one template pair served every pass, an A/A run confirmed `test_search[IVF64,Flat…nprobe4]`
    1.053 times slower over 18 passes, its last 12 within 0.95-1.08: that pair's offset, not noise
    that more passes average away (module docstring, step 3)."""
    passes, pass_seconds = [], []
    plan = list(suspects)
    for number in range(1, CONFIRMATIONS + MORE_CONFIRMATIONS + 1):
        if number == CONFIRMATIONS + 1:
            again = set(undecided(pass_estimates(passes), min_effect))
            plan = [nodeid for nodeid in plan if nodeid in again]
            log(f"second look: {len(plan)} undecided suspect(s) get {MORE_CONFIRMATIONS} more passes"
                + "".join(f"\n  {nodeid}" for nodeid in plan))
            if not plan:
                break
        look = "first look" if number <= CONFIRMATIONS else "second look"
        log(f"confirmation {number} ({look}): {len(plan)} suspect(s), new forked workers")
        started = time.perf_counter()
        with started_workers(base, head, [*pytest_args, "--no-perf-memory"], head_environment,
                             template=True) as workers:
            plan, _, _ = agree_on_plan(workers["base"], workers["head"], only=plan)  # in collection order
            passes.append(child_pass(workers, plan, rng, min_effect, f"confirmation {number}", log,
                                     plan_sent=True))
            stop_templates(workers)
        pass_seconds.append(time.perf_counter() - started)
    return passes, pass_seconds


def child_pass(workers: dict[str, Worker], plan: list[str], rng: random.Random, min_effect: float, label: str, log,
               plan_sent: bool) -> list[PairedBenchmark]:
    """One pass at the confirmation settings (CONFIRMATION_PAIRS, ALPHA) by a forked child of each template:
    send the templates the plan, each forking a child for it, unless agree_on_plan already sent it (`plan_sent`);
    pair it; wait until both children end."""
    if not plan_sent:
        for worker in workers.values():
            worker.send_plan(plan)
    paired = pair_plan(workers, plan, rng, CONFIRMATION_PAIRS, CONFIRMATION_PAIRS, min_effect, ALPHA, log)
    end_child_pass(workers, label)
    return paired


def end_child_pass(workers: dict[str, Worker], label: str) -> None:
    """Wait until each template's child has run its plan; ABError with the worker's log if one failed."""
    for worker in workers.values():
        _, status = worker.receive(end_of_pass=True)
        if status != 0:
            raise ABError(f"the {worker.side.role} worker's child for {label} exited with {status}:\n"
                          + worker.log_tail())


def stop_templates(workers: dict[str, Worker]) -> None:
    """Tell each template, its child's pass ended, to exit, and wait until it has."""
    for worker in workers.values():
        worker.send("stop")
    for worker in workers.values():
        worker.process.wait()


def pass_estimates(confirmations: list[list[PairedBenchmark]]) -> dict[str, list[PairedEstimate]]:
    """Each benchmark's estimates from the confirmation passes that timed it, in pass order."""
    found: dict[str, list[PairedEstimate]] = {}
    for passed in confirmations:
        for benchmark in passed:
            found.setdefault(benchmark.name, []).append(estimate(benchmark, ALPHA))
    return found


def confirmed(first_look: list[PairedEstimate], every_pass: list[PairedEstimate],
              slower: bool) -> tuple[PairedEstimate, float]:
    """A suspect's one-sided p-value for "slower" (or, slower=False, "faster") over the looks taken (its
    estimates from the first CONFIRMATIONS passes; from every pass, where it had more), the smaller
    look's times LOOKS, with that look's estimate and interval.

    Bonferroni over the looks holds whatever rule chooses who is looked at again, assuming the
    further passes draw their offsets as the first ones did (they time only the undecided
    suspects, so a suspect's neighbours in its child differ); each look is
    `stats.across_passes`'s t-test."""
    looks = [across_passes(first_look, ALPHA)]
    if len(every_pass) > len(first_look):
        looks.append(across_passes(every_pass, ALPHA))
    tested = [(found, p_slower if slower else 1 - p_slower) for found, p_slower in looks]
    found, p_value = min(tested, key=lambda look: look[1])
    return found, min(1.0, LOOKS * p_value)


BothWays = dict[bool, tuple[PairedEstimate, float]]  # slower (True) and faster (False): `confirmed`'s estimate and p


def rejections(tests: dict[str, BothWays]) -> dict[bool, dict[str, bool]]:
    """Benjamini-Hochberg at ALPHA in the slower (True) and the faster (False) family, each of them
    every suspect tested one-sided that way."""
    names = sorted(tests)
    return {slower: dict(zip(names, benjamini_hochberg([tests[name][slower][1] for name in names], ALPHA)
                             if names else ())) for slower in (True, False)}


def undecided(estimates: dict[str, list[PairedEstimate]], min_effect: float) -> list[str]:
    """Suspects (those timed in at least two passes) whose first look leans slower beyond
    1 + SUSPECT_SHARE x min_effect and is either not rejected by Benjamini-Hochberg in the slower
    family (each at its first look's p-value times LOOKS) or rejected with a ratio short of
    1 + min_effect (so "unsure" unless more passes find it). A suspect leaning faster gets no
    second look: in two A/A runs the suspects leaning either way sent 13 of 21-25 suspects to
    twelve more passes, those leaning slower 8 and 10; improvements do not fail a run.

    A suspect rejected here stays rejected after the second look (`time_comparisons`): its own
    p-values and the others' can only fall, and Benjamini-Hochberg rejects more when p-values
    fall; one given no second look keeps its first look's estimate and verdicts. The A/A bound
    holds in each family: the rule that looks again at every suspect leaning beyond the limit
    either way has final p-values that each depend on that suspect's passes only (independent
    tests). This rule looks again at a subset of its suspects, so its final p-values are each
    at least that rule's, and Benjamini-Hochberg then rejects a subset of what it rejects."""
    tests = {name: {slower: confirmed(found, found, slower) for slower in (True, False)}
             for name, found in estimates.items() if len(found) >= 2}
    rejected = rejections(tests)[True]
    lean_limit, effect = math.log1p(SUSPECT_SHARE * min_effect), math.log1p(min_effect)
    return sorted(name for name, both_ways in tests.items()  # one look: the same estimate both ways
                  if math.log(both_ways[True][0].ratio) > lean_limit
                  and (not rejected[name] or math.log(both_ways[True][0].ratio) <= effect))


def run_ab(repository: Path, base_revision: str, head_revision: str | None, pytest_args: list[str],
           min_effect: float = MIN_EFFECT, pairs: int = PAIRS, max_pairs: int = MAX_PAIRS,
           thresholds: Thresholds = Thresholds(), storage: Path | None = None, seed: int | None = None,
           head_environment: dict[str, str] | None = None, log=print) -> ABResult:
    """Run both revisions' suites in lockstep and judge every benchmark they share.

    A benchmark whose first-pass ratio passes 1 + SUSPECT_SHARE x min_effect is timed again in
    CONFIRMATIONS passes (MORE_CONFIRMATIONS more where `undecided`), each by forked workers of
    both sides that set up afresh (CONFIRMATION_PAIRS pairs each), and judged on those passes: a set-up's memory placement can make it differ by several
    percent for its whole life, which no number of pairs between the same two set-ups reveals.
    `head_environment` is added to the head workers' environment only (tools/measure_gate.py
    plants a slowdown with it). Both sides' first-pass runs are saved as ordinary
    pytest-benchmark runs under `storage`.
    """
    if not 0 <= min_effect < 10:
        raise ValueError(f"min_effect={min_effect}: expected a fraction such as 0.05")
    if not 4 <= pairs <= max_pairs or pairs % 2 or max_pairs % 2:
        raise ValueError(f"pairs={pairs}, max_pairs={max_pairs}: expected even numbers with 4 <= pairs <= max_pairs")
    started = time.perf_counter()
    root = repository_root(repository)
    base, head = make_side(root, "base", base_revision), make_side(root, "head", head_revision)
    notes = []
    if declared_dependencies(base) != declared_dependencies(head):
        notes.append("warning: the two revisions declare different dependencies (pyproject.toml); both sides "
                     "run with the packages installed here")
    seed = secrets.randbits(32) if seed is None else seed
    rng = random.Random(seed)
    first_started = time.perf_counter()
    first = run_session(base, head, pytest_args, rng, pairs, max_pairs, min_effect, head_environment or {}, log)
    first_pass_seconds = time.perf_counter() - first_started
    for side in (base, head):
        log(f"{side.role}: {side.revision} = {side.commit[:12]} in {side.tree}; embedsearch from {side.imported_from}")
    suspects = suspect_names(first.paired, min_effect)
    confirmations, pass_seconds = (
        run_confirmations(base, head, pytest_args, rng, suspects, min_effect, head_environment or {}, log)
        if suspects else ([], []))
    saved = []
    if storage is not None:
        for role, run in first.runs.items():
            side = base if role == "base" else head
            saved.append(save_run(run.data, storage, f"ab-{role}-{side.commit[:10]}"))
    report = judge(base, head, first, confirmations, min_effect, thresholds)
    report.notes = notes + report.notes
    for nodeid in first.added:
        report.notes.append(f"{nodeid}: added in head, not compared")
    for nodeid in first.removed:
        report.notes.append(f"{nodeid}: removed in head, not compared")
    settings = {"alpha": ALPHA, "alpha_per_look": first.alpha, "min_effect": min_effect, "pairs": pairs,
                "max_pairs": max_pairs, "confirmations": CONFIRMATIONS, "more_confirmations": MORE_CONFIRMATIONS,
                "confirmation_pairs": CONFIRMATION_PAIRS, "suspect_share": SUSPECT_SHARE,
                "batch_seconds": BATCH_SECONDS, "seed": seed, "pytest_args": pytest_args,
                "threads": first.runs["base"].suite.get("threads"), "tier": first.runs["base"].suite.get("tier")}
    return ABResult(base, head, report, first.paired, confirmations, first.added,
                    first.removed, time.perf_counter() - started, first_pass_seconds, pass_seconds, saved, settings)


def suspect_names(paired: list[PairedBenchmark], min_effect: float) -> list[str]:
    """The benchmarks whose first-pass ratio passes 1 + SUSPECT_SHARE x min_effect either way."""
    limit = 1 + SUSPECT_SHARE * min_effect
    ratios = {b.name: estimate(b, ALPHA).ratio for b in paired}  # the ratio does not depend on alpha
    return [name for name, ratio in ratios.items() if not 1 / limit <= ratio <= limit]


def estimate(benchmark: "PairedBenchmark", alpha: float) -> PairedEstimate:
    """The crossover estimate of a benchmark's head / base ratio from the pairs of one pass."""
    return crossover_estimate(*benchmark.log_ratios_by_order(), alpha)


def time_comparisons(first: list[PairedBenchmark], first_alpha: float, confirmations: list[list[PairedBenchmark]],
                     min_effect: float, names: dict[str, str]) -> list[Comparison]:
    """The time verdict of every first-pass benchmark (module docstring, step 3).

    A benchmark timed in at least two confirmation passes is judged on them (`confirmed`, both
    ways, over one or two looks), Benjamini-Hochberg at ALPHA within each way's family
    (`rejections`; the slower family decides the exit code). Any other benchmark is judged on
    its first pass's pairs (`first_alpha` per look), which can find it neither slower nor
    faster: "unsure" at most."""
    first_look = pass_estimates(confirmations[:CONFIRMATIONS])
    estimates = {name: found for name, found in pass_estimates(confirmations).items()
                 if len(first_look.get(name, ())) >= 2}
    tests = {name: {slower: confirmed(first_look[name], found, slower) for slower in (True, False)}
             for name, found in estimates.items()}
    rejected = rejections(tests)
    comparisons = []
    for benchmark in first:
        name = names.get(benchmark.name, benchmark.name)
        base_median = float(np.median([np.median(pair["base"]) for pair in benchmark.pairs]))
        head_median = float(np.median([np.median(pair["head"]) for pair in benchmark.pairs]))
        if benchmark.name in tests:
            both_ways = tests[benchmark.name]
            slower, faster = rejected[True][benchmark.name], rejected[False][benchmark.name]
            # the estimate of the way rejected (slower where both were), else of the way with the smaller p
            way = slower if slower or faster else both_ways[True][1] <= both_ways[False][1]
            found = both_ways[way][0]
            verdict = ("unsure" if slower and faster else  # the two looks disagree
                       "slower" if slower and found.ratio > 1 + min_effect else
                       "faster" if faster and found.ratio < 1 / (1 + min_effect) else
                       "unsure" if slower or faster else "same")
            passes = (estimate(benchmark, ALPHA), *estimates[benchmark.name])
        else:
            found = estimate(benchmark, first_alpha)
            verdict, passes = time_verdict(found, min_effect), ()
            verdict = "unsure" if verdict in ("slower", "faster") else verdict
        comparisons.append(Comparison(name, "time", base_median, head_median, found.ratio, found.low, found.high,
                                      verdict, pairs=found.pairs, passes=passes))
    return comparisons


def judge(base: Side, head: Side, first: Session, confirmations: list[list[PairedBenchmark]], min_effect: float,
          thresholds: Thresholds) -> GateReport:
    """The verdicts: time (`time_comparisons`), figures from both first-pass runs, one-sided failures."""
    runs = first.runs
    names = {bench["fullname"]: bench["name"] for run in runs.values() for bench in run.data["benchmarks"]}
    report = GateReport(time_comparisons(first.paired, first.alpha, confirmations, min_effect, names))
    base_benchmarks, head_benchmarks = runs["base"].benchmarks, runs["head"].benchmarks
    for name in sorted(set(base_benchmarks) & set(head_benchmarks)):
        report.comparisons += compare_figures(name, base_benchmarks[name].get("extra_info") or {},
                                              head_benchmarks[name].get("extra_info") or {}, thresholds)
    report.comparisons += paired_exponent_changes(report.comparisons, runs["base"], thresholds)
    for nodeid, outcome in head.outcomes.items():
        base_outcome = base.outcomes.get(nodeid, "")
        if outcome.startswith("failed") and not base_outcome.startswith("failed"):
            report.comparisons.append(Comparison(nodeid, "test", math.nan, math.nan, math.nan, verdict="failed"))
            report.notes.append(f"{nodeid}: fails on head only: {outcome}")
        elif outcome.startswith("failed") or base_outcome.startswith("failed"):
            report.notes.append(f"{nodeid}: base {base_outcome.split(':')[0]}, head {outcome.split(':')[0]}")
        elif outcome != base_outcome:
            report.notes.append(f"{nodeid}: base {base_outcome}, head {outcome}: not timed on both sides")
    return report


def paired_exponent_changes(time: list[Comparison], base: Run, thresholds: Thresholds) -> list[Comparison]:
    """Each scaling series' exponent change: `stats.scaling_exponents` of its time verdicts' ratios.

    Fitted to the same sizes, the head's exponent less the base's is the exponent of the ratios
    head / base, since least squares is linear in the log times; so it assumes what
    `scaling_exponents` does, of the ratios. Each size's ratio is its time verdict's: its
    confirmation passes' (fresh set-ups) where it was a suspect, else its first pass's, which lies
    within the suspect limits. So the offsets of the first pass's two processes, which exponents
    fitted to each side's own medians carry, count only where they are small (an A/A run at
    492fe17: own medians 0.813 against 1.032; the first pass's paired ratios, slope 0.192; the
    verdicts', all four sizes confirmed, 0.015). Shown as the base side's exponent, fitted to the
    sizes timed on both sides, and that plus the change; a change beyond
    `thresholds.exponent_change` either way is a regression. A series needs three sizes or more."""
    ratios = {c.name: c.ratio for c in time if c.metric == "time"}
    timed = [bench for bench in base.data["benchmarks"] if bench["name"] in ratios]
    changes = {fit["series"]: fit["exponent"]
               for fit in scaling_exponents([{**bench, "stats": {"median": ratios[bench["name"]]}} for bench in timed])}
    comparisons = []
    for fit in scaling_exponents(timed):
        change = changes[fit["series"]]
        verdict = "changed" if abs(change) > thresholds.exponent_change else "same"
        comparisons.append(figure(fit["series"], "exponent", fit["exponent"], fit["exponent"] + change, verdict))
    return comparisons


def markdown_summary(result: ABResult) -> str:
    """A pull-request comment: regressions, then improvements, then one count line."""
    report = result.report
    lines = [f"### embedsearch ab: `{result.base.revision}` ({result.base.commit[:10]}) → "
             f"`{result.head.revision}` ({result.head.commit[:10]})", ""]
    rows = [("regression", c) for c in report.regressions] + [("improvement", c) for c in report.improvements]
    if rows:
        lines += ["| | benchmark | figure | base | head | ratio | interval | pairs | verdict |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for kind, c in rows:
            interval = f"[{c.low:.3f}, {c.high:.3f}]" if c.low is not None else ""
            lines.append(f"| {kind} | `{c.name}` | {c.metric} | {format_value(c.metric, c.baseline)} | "
                         f"{format_value(c.metric, c.current)} | {c.ratio:.3f} | {interval} | {c.pairs or ''} | "
                         f"{c.verdict} |")
        lines.append("")
    timed = [c for c in report.comparisons if c.metric == "time"]
    lines.append(f"**{len(report.regressions)} regression(s), {len(report.improvements)} improvement(s)** in "
                 f"{len(timed)} paired benchmarks ({len(report.comparisons)} comparisons, minimum effect "
                 f"{result.settings['min_effect']:.0%}, {result.seconds:.0f} s)"
                 + (f"; {len(result.added)} added, {len(result.removed)} removed" if result.added or result.removed
                    else ""))
    return "\n".join(lines) + "\n"


def wall_time_summary(result: ABResult) -> str:
    """Where a gate run's wall time went: the first pass (its workers' start to end), then each look's passes
    (count, suspects, seconds); the rest (worktrees, judging, saving) is the total's remainder."""
    parts = [f"{result.seconds:.0f} s: first pass {result.first_pass_seconds:.0f} s"]
    looks = (("first look", result.confirmations[:CONFIRMATIONS], result.pass_seconds[:CONFIRMATIONS]),
             ("second look", result.confirmations[CONFIRMATIONS:], result.pass_seconds[CONFIRMATIONS:]))
    for name, passes, seconds in looks:
        if passes:
            parts.append(f"{name} {len(passes)} passes of {len(passes[0])} suspect(s), {sum(seconds):.0f} s "
                         f"({min(seconds):.0f}-{max(seconds):.0f} s each)")
    return "; ".join(parts)


def result_record(result: ABResult) -> dict:
    """The JSON record of a gate run: both sides, settings, every pair's times, every comparison."""
    return {
        "sides": {side.role: {"revision": side.revision, "commit": side.commit, "tree": str(side.tree),
                              "embedsearch_imported_from": side.imported_from} for side in (result.base, result.head)},
        "settings": result.settings, "seconds": result.seconds, "first_pass_seconds": result.first_pass_seconds,
        "pass_seconds": result.pass_seconds, "saved_runs": [str(path) for path in result.saved],
        "added": result.added, "removed": result.removed,
        "benchmarks": [paired_record(b) for b in result.benchmarks],
        "confirmations": [[paired_record(b) for b in passed] for passed in result.confirmations],  # forked workers
        "comparisons": [{"name": c.name, "metric": c.metric, "base": c.baseline, "head": c.current, "ratio": c.ratio,
                         "low": c.low, "high": c.high, "pairs": c.pairs, "verdict": c.verdict,
                         "regression": c.regression, "passes": [pass_record(found) for found in c.passes]}
                        for c in result.report.comparisons],
        "notes": result.report.notes,
    }


def pass_record(found: PairedEstimate) -> dict:
    """One pass's own estimate of a benchmark (its interval: within the pass, two-sided 1 - 2·ALPHA)."""
    return {"ratio": found.ratio, "low": found.low, "high": found.high, "pairs": found.pairs,
            "log_standard_error": found.log_standard_error}


def paired_record(benchmark: PairedBenchmark) -> dict:
    return {"name": benchmark.name, "iterations": benchmark.iterations,
            "rounds_per_batch": benchmark.rounds_per_batch, "warmup": benchmark.warmup, "pairs": benchmark.pairs}


def paired_from_record(record: dict) -> PairedBenchmark:
    """A benchmark's pairs as `paired_record` wrote them."""
    return PairedBenchmark(record["name"], record["iterations"], record["rounds_per_batch"], record["pairs"],
                           record["warmup"])


def write_record(result: ABResult, path: Path) -> Path:
    """Write the JSON record atomically."""
    text = json.dumps(result_record(result), indent=1, default=str).encode()
    return write_atomically(path, lambda stream: stream.write(text))
