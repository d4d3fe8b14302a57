import multiprocessing
import os
import signal
import subprocess
import sys

import pytest

from embedsearch.storage import RunFileError, load_run, load_runs, remove_stale_claims, save_run
from saved_runs import make_run, noisy


def test_corrupt_or_truncated_runs_are_skipped_with_a_warning_naming_them(tmp_path):
    good = save_run(make_run({"a": (noisy(1.0), {})}).data, tmp_path, "good")
    text = good.read_text()
    (tmp_path / "0002_truncated.json").write_text(text[: len(text) // 2])
    (tmp_path / "0003_not-a-run.json").write_text('{"hello": 1}')
    (tmp_path / "0004_binary.json").write_bytes(b"\xff\xfe\x00")
    with pytest.warns(UserWarning) as caught:
        runs = load_runs([tmp_path])
    assert [run.path for run in runs] == [good]
    messages = " ".join(str(warning.message) for warning in caught)
    for name in ("0002_truncated.json", "0003_not-a-run.json", "0004_binary.json"):
        assert name in messages
    with pytest.raises(RunFileError, match="0002_truncated.json"):
        load_run(tmp_path / "0002_truncated.json")


def test_an_interrupted_save_leaves_no_file(tmp_path, monkeypatch):
    def interrupted(descriptor):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_run(make_run({"a": (noisy(1.0), {})}).data, tmp_path, "run")
    assert list(tmp_path.iterdir()) == []


def _save_one(arguments: tuple[str, int]) -> str:
    folder, index = arguments
    return str(save_run(make_run({f"bench{index}": (noisy(1.0, rounds=2000, seed=index), {})}).data, folder, "run"))


def test_concurrent_saves_all_survive_under_distinct_numbers(tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        paths = pool.map(_save_one, [(str(tmp_path), index) for index in range(12)])
    assert len(set(paths)) == 12
    runs = load_runs([tmp_path])
    assert sorted(name for run in runs for name in run.benchmarks) == sorted(f"bench{i}" for i in range(12))
    assert sorted(path.name[:4] for path in tmp_path.iterdir()) == [f"{i:04d}" for i in range(1, 13)]  # no leftovers


def _save_named(arguments: tuple[str, int]) -> str:
    folder, index = arguments
    return str(save_run(make_run({f"bench{index}": (noisy(1.0, rounds=50, seed=index), {})}).data, folder,
                        f"name{index % 2}"))


def test_concurrent_saves_under_different_names_never_share_a_number(tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        paths = pool.map(_save_named, [(str(tmp_path), index) for index in range(40)])
    numbers = sorted(os.path.basename(path)[:4] for path in paths)
    assert numbers == [f"{i:04d}" for i in range(1, 41)]


def test_a_killed_writer_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    # A writer killed between writing and linking (SIGKILL: no finally runs) leaves its temporary and its claim.
    script = ("import os, sys, json; sys.path.insert(0, 'tests'); from saved_runs import make_run, noisy;"
              "import embedsearch.storage as storage;"
              "os.fsync = lambda descriptor: os.kill(os.getpid(), 9);"
              f"storage.save_run(make_run({{'a': (noisy(1.0), {{}})}}).data, {str(tmp_path)!r}, 'killed')")
    completed = subprocess.run([sys.executable, "-c", script], cwd=os.path.dirname(os.path.dirname(__file__)))
    assert completed.returncode == -signal.SIGKILL
    leftovers = list(tmp_path.glob(".0001_killed.json.*.tmp"))
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0
    assert [claim.name for claim in tmp_path.glob(".claim-*")] == [".claim-0001"]
    saved = save_run(make_run({"a": (noisy(1.0), {})}).data, tmp_path, "next")
    assert sorted(path.name for path in tmp_path.iterdir()) == [saved.name] and saved.name.startswith("0001_")
    mine = tmp_path / ".claim-0002"  # a live writer's claim is left alone
    mine.write_text(str(os.getpid()))
    assert remove_stale_claims(tmp_path) == [] and mine.exists()
