import multiprocessing
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from embedsearch.files import (TEMPORARY_SUFFIX, check_writable, remove_stale_temporaries, save_npz_atomically,
                              write_atomically)


def test_check_writable_refuses_folders_files_in_the_way_and_unwritable_places(tmp_path):
    assert check_writable(tmp_path / "new" / "deeper" / "run.json", "--json") == tmp_path / "new" / "deeper" / "run.json"
    assert not (tmp_path / "new").exists()  # nothing is created
    with pytest.raises(ValueError, match=f"--json='{tmp_path}' is a directory: expected a file path"):
        check_writable(tmp_path, "--json")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(ValueError, match=f"'{a_file}' is a file, so no folder can be created there"):
        check_writable(a_file / "run.json", "--json")
    with pytest.raises(ValueError, match=f"storage='{a_file}' is not a directory: expected a folder"):
        check_writable(a_file, "storage", directory=True)
    assert check_writable(tmp_path / "runs", "storage", directory=True) == tmp_path / "runs"
    with pytest.raises(ValueError, match="cannot write in '/proc'"):
        check_writable("/proc/embedsearch-test.json", "--json")


def test_atomic_save_round_trips_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "data.npz"
    save_npz_atomically(target, {"vectors": np.arange(6.0).reshape(2, 3)})
    save_npz_atomically(target, {"vectors": np.ones(2)})  # replaces
    with np.load(target) as stored:
        np.testing.assert_array_equal(stored["vectors"], np.ones(2))
    assert [path.name for path in target.parent.iterdir()] == ["data.npz"]


def test_temporaries_of_killed_writers_are_removed_at_the_next_save(tmp_path):
    # a writer killed by SIGKILL midway leaves its temporary (8 MB here) behind
    writer = subprocess.Popen([sys.executable, "-c", f"""
import os, signal, numpy as np
import embedsearch.files as files
savez = np.savez
def savez_then_die(path, **arrays):
    savez(path, **arrays)
    os.kill(os.getpid(), signal.SIGKILL)
np.savez = savez_then_die
files.save_npz_atomically({str(tmp_path / 'cache.npz')!r}, {{"vectors": np.zeros((1000, 2000), np.float32)}})
"""], env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)})
    assert writer.wait() == -9
    left = list(tmp_path.glob(f".*{TEMPORARY_SUFFIX}"))
    assert len(left) == 1 and left[0].stat().st_size > 8_000_000 and not (tmp_path / "cache.npz").exists()
    live = tmp_path / left[0].name.replace(f".{writer.pid}.", f".{os.getpid()}.")  # a running writer's
    live.write_bytes(b"in progress")
    foreign = tmp_path / ".other.npz.otherhost.1.0a0b0c0d.tmp"  # another host's: its pid means nothing here
    foreign.write_bytes(b"")
    save_npz_atomically(tmp_path / "other.npz", {"ids": np.arange(3)})
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([live.name, foreign.name, "other.npz"])
    assert remove_stale_temporaries(tmp_path) == []


def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "record.json"
    write_atomically(target, lambda stream: stream.write(b"old"))

    def interrupted(stream):
        stream.write(b"half of the new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, interrupted)
    assert target.read_bytes() == b"old" and sorted(p.name for p in target.parent.iterdir()) == ["record.json"]
    write_atomically(target, lambda stream: stream.write(b"new"))
    umask = os.umask(0)
    os.umask(umask)
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_an_exclusive_write_never_overwrites(tmp_path):
    target = tmp_path / "0001_run.json"
    write_atomically(target, lambda stream: stream.write(b"first"), exclusive=True)
    with pytest.raises(FileExistsError):
        write_atomically(target, lambda stream: stream.write(b"second"), exclusive=True)
    assert target.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["0001_run.json"]


WRITES_EACH = 8
SIZE = 2**18  # bytes a write, in 16 chunks: a reader of a non-atomic write would see part of it


def _write_many(arguments: tuple[str, int, bool]) -> int:
    """Write the same path WRITES_EACH times, each time SIZE bytes of one value; return how many writes landed."""
    path, writer, exclusive = arguments
    landed = 0
    for write in range(WRITES_EACH):
        payload = bytes([writer * WRITES_EACH + write]) * SIZE

        def in_chunks(stream, payload=payload):
            for start in range(0, SIZE, SIZE // 16):
                stream.write(payload[start:start + SIZE // 16])

        try:
            write_atomically(path, in_chunks, exclusive=exclusive)
            landed += 1
        except FileExistsError:
            pass
    return landed


@pytest.mark.parametrize("exclusive", [False, True])
def test_concurrent_writers_of_one_path_leave_one_whole_file(tmp_path, exclusive):
    target = tmp_path / "shared.bin"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        writes = pool.map_async(_write_many, [(str(target), writer, exclusive) for writer in range(4)])
        while not writes.ready():  # read while they write: every read is one writer's whole payload
            if target.exists():
                content = target.read_bytes()
                assert len(content) == SIZE and content.count(content[:1]) == SIZE
            time.sleep(0.001)
        landed = writes.get()
    content = target.read_bytes()
    assert len(content) == SIZE and content.count(content[:1]) == SIZE
    assert sum(landed) == (1 if exclusive else 4 * WRITES_EACH)
    assert [p.name for p in tmp_path.iterdir()] == ["shared.bin"]  # no temporary left behind
