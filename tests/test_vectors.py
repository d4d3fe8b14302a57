import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from embedsearch.vectors import (VectorFileError, open_dataset, read_bin_groundtruth, read_vectors,
                                 write_bin_groundtruth, write_vectors)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures" / "vectors"
N, NQ, D, K = 120, 10, 8, 10  # tools/make_vector_fixtures.py


def exact_ids(database: np.ndarray, queries: np.ndarray, metric: str, k: int = K) -> np.ndarray:
    database, queries = database.astype(np.float64), queries.astype(np.float64)
    scores = -(queries @ database.T) if metric == "ip" else ((queries[:, None] - database[None]) ** 2).sum(-1)
    return np.argsort(scores, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("suffix, dtype", [(".fvecs", np.float32), (".ivecs", np.int32), (".bvecs", np.uint8),
                                           (".fbin", np.float32), (".u8bin", np.uint8), (".i8bin", np.int8),
                                           (".ibin", np.int32), (".npy", np.float32)])
def test_every_format_round_trips_memory_mapped(tmp_path, suffix, dtype):
    rng = np.random.default_rng(0)
    vectors = (rng.standard_normal((37, 5)) * 50).astype(dtype)
    path = tmp_path / f"v{suffix}"
    write_vectors(path, vectors)
    read = read_vectors(path)
    np.testing.assert_array_equal(read, vectors)
    assert read.dtype == dtype
    base = read
    while getattr(base, "base", None) is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap)  # mapped, not read into memory


def test_big_ann_groundtruth_round_trips(tmp_path):
    ids = np.arange(12, dtype=np.int32).reshape(3, 4)
    distances = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    write_bin_groundtruth(tmp_path / "gt.bin", distances, ids)
    read_distances, read_ids = read_bin_groundtruth(tmp_path / "gt.bin")
    np.testing.assert_array_equal(read_ids, ids)
    np.testing.assert_array_equal(read_distances, distances)


def test_committed_fixtures_hold_the_same_data_in_every_format():
    points = np.load(FIXTURES / "tiny.npy")
    database, queries = points[:N], points[N:]
    np.testing.assert_array_equal(read_vectors(FIXTURES / "tiny_base.fvecs"), database)
    np.testing.assert_array_equal(read_vectors(FIXTURES / "tiny.fbin"), database)
    np.testing.assert_array_equal(read_vectors(FIXTURES / "tiny_query.fbin"), queries)
    np.testing.assert_array_equal(read_vectors(FIXTURES / "tiny.u8bin"), read_vectors(FIXTURES / "tiny.bvecs"))
    np.testing.assert_array_equal(read_vectors(FIXTURES / "tiny.i8bin").astype(int) + 128,
                                  read_vectors(FIXTURES / "tiny.bvecs"))
    np.testing.assert_array_equal(read_vectors(FIXTURES / "tiny.ibin"), exact_ids(database, queries, "l2"))
    for path in FIXTURES.iterdir():
        assert path.stat().st_size < 16 * 1024, path  # a few KB each


@pytest.mark.parametrize("name, metric, normalize", [("tiny-angular.hdf5", "ip", True),
                                                     ("tiny-euclidean.hdf5", "l2", False)])
def test_ann_benchmarks_hdf5_metric_from_file_and_checked_ground_truth(name, metric, normalize):
    dataset = open_dataset(FIXTURES / name)
    assert (dataset.metric, dataset.normalize, dataset.n, dataset.nq, dataset.d) == (metric, normalize, N, NQ, D)
    database, queries = dataset.get_database(), dataset.get_queries()
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(database, axis=1), 1, rtol=1e-6)
    distances, ids = dataset.groundtruth()  # stored 'neighbors', range- and sample-checked
    np.testing.assert_array_equal(ids, exact_ids(database, queries, metric))
    expected = (queries @ database.T) if metric == "ip" else ((queries[:, None] - database[None]) ** 2).sum(-1)
    np.testing.assert_allclose(distances, np.take_along_axis(expected, ids, axis=1), rtol=1e-5, atol=1e-5)
    assert dataset.record()["truth_source"].endswith("'neighbors'")


def test_texmex_base_finds_its_queries_and_ground_truth():
    dataset = open_dataset(FIXTURES / "tiny_base.fvecs")
    assert dataset.query_source == "file tiny_query.fvecs" and dataset.truth_source.endswith("tiny_groundtruth.ivecs")
    assert dataset.metric == "l2" and dataset.get_groundtruth(3).shape == (NQ, 3)


def test_big_ann_with_queries_and_ground_truth_files():
    dataset = open_dataset(FIXTURES / "tiny.fbin", queries=FIXTURES / "tiny_query.fbin",
                           groundtruth=FIXTURES / "tiny_groundtruth.bin")
    np.testing.assert_array_equal(dataset.get_groundtruth(),
                                  exact_ids(dataset.get_database(), dataset.get_queries(), "l2"))


def test_file_without_queries_holds_out_its_last_rows_and_caches_computed_truth(tmp_path):
    dataset = open_dataset(FIXTURES / "tiny.npy", cache_dir=tmp_path)
    assert (dataset.n, dataset.nq) == (117, 13)  # a tenth of 130 rows held out
    assert dataset.query_source == "held out: the last 13 rows of tiny.npy"
    ids = dataset.get_groundtruth(K)
    np.testing.assert_array_equal(ids, exact_ids(dataset.get_database(), dataset.get_queries(), "l2"))
    cached = list(tmp_path.glob("truth-*.npz"))
    assert len(cached) == 1 and dataset.content_hash in cached[0].name
    again = open_dataset(FIXTURES / "tiny.npy", cache_dir=tmp_path)
    np.testing.assert_array_equal(again.get_groundtruth(K), ids)


def test_embeddings_file_of_embedsearch_run_carries_labels():
    dataset = open_dataset(FIXTURES / "tiny_embeddings.npz")
    assert dataset.metric == "ip" and dataset.n_classes == 4
    assert dataset.labels[0].shape == (N,) and dataset.labels[1].shape == (NQ,)


def test_npz_with_train_test_neighbors():
    dataset = open_dataset(FIXTURES / "tiny.npz")
    np.testing.assert_array_equal(dataset.get_groundtruth(), read_vectors(FIXTURES / "tiny.ibin"))


def test_content_hash_names_the_bytes(tmp_path):
    copy = tmp_path / "copy.fbin"
    shutil.copy(FIXTURES / "tiny.fbin", copy)
    first = open_dataset(copy).label
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    assert first.startswith("copy.fbin-") and open_dataset(copy).label != first


# ---- bad files: each error names the file and what is wrong ----------------------------------------

def test_size_not_fitting_the_header(tmp_path):
    path = tmp_path / "bad.fbin"
    path.write_bytes((FIXTURES / "tiny.fbin").read_bytes() + b"\0" * 4)
    with pytest.raises(VectorFileError, match=rf"bad.fbin: file size 3852 is not 8 \+ n\*d\*4 for n=120, d=8 = 3848"):
        read_vectors(path)


@pytest.mark.parametrize("name, message", [
    ("tiny.fbin", r"truncated: file size 3808 is less than 8 \+ n\*d\*4 for n=120, d=8 = 3848"),
    ("tiny_base.fvecs", r"truncated: file size 4280 is not a whole number of 36-byte records \(4 \+ d\*4 for d=8\); "
                        r"the last record has 32 bytes"),
    ("tiny_groundtruth.bin", r"truncated: file size 768 is less than 8 \+ n\*k\*8 \(ids, then distances\) "
                             r"for n=10, k=10 = 808"),
])
def test_truncated_files(tmp_path, name, message):
    path = tmp_path / name
    path.write_bytes((FIXTURES / name).read_bytes()[:-40])
    reader = read_bin_groundtruth if name.endswith("groundtruth.bin") else read_vectors
    with pytest.raises(VectorFileError, match=f"{name}: {message}"):
        reader(path)


def test_fvecs_record_changing_d(tmp_path):
    path = tmp_path / "mixed.fvecs"
    first = np.array([2], "<i4").tobytes() + np.ones(2, "<f4").tobytes()
    second = np.array([5], "<i4").tobytes() + np.ones(2, "<f4").tobytes()
    path.write_bytes(first + second)
    with pytest.raises(VectorFileError, match=r"mixed.fvecs: record 1 \(byte offset 12\) has d=5, the first record has d=2"):
        read_vectors(path)


def test_nan_rows(tmp_path):
    vectors = np.ones((20, 4), np.float32)
    vectors[7, 2] = np.nan
    write_vectors(tmp_path / "nan.fvecs", vectors)
    dataset = open_dataset(tmp_path / "nan.fvecs")
    with pytest.raises(VectorFileError, match=r"nan.fvecs: database: 1 row\(s\) hold NaN or inf \(first at row 7\)"):
        dataset.get_database()


def test_ground_truth_ids_out_of_range(tmp_path):
    ids = read_vectors(FIXTURES / "tiny_groundtruth.ivecs").copy()
    ids[3, 4] = 999
    write_vectors(tmp_path / "gt.ivecs", ids)
    dataset = open_dataset(FIXTURES / "tiny.fbin", queries=FIXTURES / "tiny_query.fbin", groundtruth=tmp_path / "gt.ivecs")
    with pytest.raises(VectorFileError, match=r"gt.ivecs: ground-truth id 999 \(query 3, rank 4\) is outside 0..119"):
        dataset.groundtruth()


def test_stored_ground_truth_that_disagrees_with_exact_search(tmp_path):
    path = tmp_path / "wrong.hdf5"
    shutil.copy(FIXTURES / "tiny-euclidean.hdf5", path)
    with h5py.File(path, "r+") as file:
        neighbors = file["neighbors"][:]
        neighbors[0] = neighbors[0][::-1] + 0  # reversed order is still the same set...
        neighbors[0, -1] = (set(range(N)) - set(neighbors[0])).pop()  # ...but one true neighbour is replaced
        file["neighbors"][:] = neighbors
    with pytest.raises(VectorFileError, match=r"wrong.hdf5: 'neighbors': stored ground truth disagrees with exact l2 "
                                              r"search at query 0"):
        open_dataset(path).groundtruth()


@pytest.mark.parametrize("drop, message", [
    ("test", r"has no dataset 'test': expected ann-benchmarks' 'train' and 'test'.*found \['distances', 'neighbors', 'train'\]"),
    ("distance", r"has no 'distance' attribute"),
])
def test_missing_hdf5_dataset_or_attribute(tmp_path, drop, message):
    path = tmp_path / "missing.hdf5"
    shutil.copy(FIXTURES / "tiny-angular.hdf5", path)
    with h5py.File(path, "r+") as file:
        if drop == "distance":
            del file.attrs["distance"]
        else:
            del file[drop]
    with pytest.raises(VectorFileError, match=f"missing.hdf5: {message}"):
        open_dataset(path)


def test_unknown_suffix_and_missing_file(tmp_path):
    (tmp_path / "v.txt").write_text("1 2 3")
    with pytest.raises(VectorFileError, match=r"v.txt: unknown vector file type '.txt'"):
        open_dataset(tmp_path / "v.txt")
    with pytest.raises(FileNotFoundError, match="nowhere.fvecs"):
        open_dataset(tmp_path / "nowhere.fvecs")


# ---- the suite on a file ---------------------------------------------------------------------------

def run_suite(*arguments: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "pytest", "perf", "-q", "-p", "no:cacheprovider", *arguments],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_perf_suite_runs_on_an_ann_benchmarks_file():
    completed = run_suite(f"--perf-data={FIXTURES / 'tiny-angular.hdf5'}", "-k", "tiny-angular", "-rA")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    label = open_dataset(FIXTURES / "tiny-angular.hdf5").label  # file name and content hash in every id
    passed = [line for line in completed.stdout.splitlines() if label in line and "PASSED" in line]
    for benchmark in ("test_search[", "test_build_add[", "test_brute_force["):
        assert any(benchmark in line for line in passed), benchmark


def test_bad_perf_data_is_a_usage_error(tmp_path):
    path = tmp_path / "bad.fbin"
    path.write_bytes((FIXTURES / "tiny.fbin").read_bytes()[:100])
    completed = run_suite(f"--perf-data={path}", "--collect-only")
    assert completed.returncode == 4
    assert f"argument --perf-data: {path}: truncated" in completed.stderr
