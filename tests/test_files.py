import os
import subprocess
import sys

import numpy as np
import pytest

from embedsearch.files import PARTIAL_SUFFIX, check_writable, remove_stale_partials, save_npz_atomically


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
    left = list(tmp_path.glob(f"*{PARTIAL_SUFFIX}"))
    assert len(left) == 1 and left[0].stat().st_size > 8_000_000 and not (tmp_path / "cache.npz").exists()
    live = tmp_path / left[0].name.replace(f".{writer.pid}.", f".{os.getpid()}.")  # a running writer's
    live.write_bytes(b"in progress")
    foreign = tmp_path / "other.npz.otherhost.1.0.partial.npz"  # another host's: its pid means nothing here
    foreign.write_bytes(b"")
    save_npz_atomically(tmp_path / "other.npz", {"ids": np.arange(3)})
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([live.name, foreign.name, "other.npz"])
    assert remove_stale_partials(tmp_path) == []
