"""Sharded search on Ray actors and distributed embedding, on one local Ray cluster per test session."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedsearch import distributed
from embedsearch.data import tiny_imagenet
from embedsearch.distributed import RayNotInstalledError, ShardedIndex, build_sharded_index, connect
from embedsearch.index import build_index

D = 8  # dimension of the hypothesis suite's vectors: one index per test, refilled per example


def shard_pids(index: ShardedIndex) -> list[int]:
    """Process id of each shard actor (they change when an actor restarts)."""
    import ray

    return ray.get([shard.__ray_call__.remote(lambda _: os.getpid()) for shard in index.actors])


def shard_sizes(index: ShardedIndex) -> list[int]:
    """Vectors each shard actor holds, as the actor itself counts them."""
    import ray

    return ray.get([shard.ready.remote() for shard in index.actors])


def float64_distances(database: np.ndarray, queries: np.ndarray, ids: np.ndarray, metric: str) -> np.ndarray:
    """FAISS's distance of each query to each of its result ids, in float64."""
    neighbours = database.astype(np.float64)[ids]
    queries = queries.astype(np.float64)[:, None, :]
    return (queries * neighbours).sum(-1) if metric == "ip" else ((queries - neighbours) ** 2).sum(-1)


def assert_same_results(got, expected, database, queries, metric, atol=1e-5):
    """Search results agree: distances to round-off, and at every rank the float64 distances of both ids,
    so ids differ only where two vectors tie within atol (float32 round-off orders them either way;
    a tie at the k-th rank may also swap in a vector from beyond it)."""
    (distances, ids), (expected_distances, expected_ids) = got, expected
    np.testing.assert_allclose(distances, expected_distances, rtol=0, atol=atol)
    np.testing.assert_array_equal(ids == -1, expected_ids == -1)  # the same ranks left empty
    assert all(len(set(row)) == len(row) for row in (row[row >= 0] for row in ids))  # no id twice in a row
    np.testing.assert_allclose(float64_distances(database, queries, ids, metric),
                               float64_distances(database, queries, expected_ids, metric), rtol=0, atol=atol)


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ModuleNotFoundError
    with pytest.raises(RayNotInstalledError, match=r"embedsearch\[ray\]"):
        connect()
    with pytest.raises(ImportError):
        build_sharded_index("Flat", np.ones((4, 2), dtype=np.float32), shards=2)


@pytest.mark.parametrize("spec, metric, shards", [("Flat", "ip", 2), ("Flat", "l2", 1), ("TorchFlat", "ip", 2)])
def test_exact_sharded_search_equals_one_index(ray_cluster, spec, metric, shards):
    index = ShardedIndex(spec, D, metric, shards)

    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(sizes=st.lists(st.integers(1, 60), min_size=1, max_size=3), nq=st.integers(1, 20),
           k_fraction=st.floats(0, 1), seed=st.integers(0, 2**32 - 1))
    def check(sizes, nq, k_fraction, seed):
        rng = np.random.default_rng(seed)
        batches = [rng.standard_normal((size, D), dtype=np.float32) for size in sizes]
        queries = rng.standard_normal((nq, D), dtype=np.float32)
        index.reset()
        for batch in batches:  # several adds: global ids continue across them
            index.add(batch)
        database = np.concatenate(batches)
        k = 1 + round(k_fraction * (len(database) - 1))
        assert index.ntotal == len(database)
        assert_same_results(index.search(queries, k), build_index(spec, database, metric).search(queries, k),
                            database, queries, metric)

    try:
        check()
    finally:
        index.close()


def test_ivf_shards_share_one_quantizer(ray_cluster):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2000, 16), dtype=np.float32)
    queries = rng.standard_normal((50, 16), dtype=np.float32)
    sharded = build_sharded_index("IVF16,Flat", vectors, "ip", shards=2)
    try:
        single = build_index("IVF16,Flat", vectors, "ip")
        for nprobe in (3, 16):  # same quantizer: the same lists probed, so the single index's results
            sharded.set_search_params(nprobe=nprobe)
            single.set_search_params(nprobe=nprobe)
            assert_same_results(sharded.search(queries, 10), single.search(queries, 10), vectors, queries, "ip")
        assert shard_sizes(sharded) == [1000, 1000]
        assert sharded.nbytes() > single.nbytes()  # two copies of the centroids, plus 8-byte global ids
        with pytest.raises(ValueError, match="nprobe=17"):
            sharded.set_search_params(nprobe=17)
        with pytest.raises(ValueError, match="efSearch"):
            sharded.set_search_params(efSearch=8)
    finally:
        sharded.close()


def test_search_in_flight_survives_killed_shards(ray_cluster):
    """Kill every shard process while a long search runs: it is retried on the restarted, reloaded shards."""
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((40_000, 128), dtype=np.float32)  # seconds of work even on a quiet machine
    queries = rng.standard_normal((40_000, 128), dtype=np.float32)
    index = build_sharded_index("Flat", vectors, "ip", shards=2)
    try:
        pids = shard_pids(index)
        outcome = {}
        search = threading.Thread(target=lambda: outcome.update(result=index.search(queries, 5)))
        search.start()
        time.sleep(0.5)
        assert search.is_alive(), "the search finished before the kill: make it longer"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        search.join()
        assert_same_results(outcome["result"], build_index("Flat", vectors, "ip").search(queries, 5), vectors, queries,
                            "ip", atol=1e-4)
        assert set(shard_pids(index)).isdisjoint(pids)  # both actors were restarted
        assert shard_sizes(index) == [20_000, 20_000]
    finally:
        index.close()


def test_bad_input_is_refused(ray_cluster):
    vectors = np.random.default_rng(2).standard_normal((3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="shards=0"):
        build_sharded_index("Flat", vectors, shards=0)
    with pytest.raises(ValueError, match=r"shards=4: expected at most one shard per vector \(3 vectors\)"):
        build_sharded_index("Flat", vectors, shards=4)
    with pytest.raises(ValueError, match="shards=3 x threads=1 on cpu: they need 3 CPU, the Ray cluster has 2"):
        build_sharded_index("Flat", vectors, shards=3)
    with pytest.raises(ValueError, match="device='tpu'"):
        ShardedIndex("Flat", 4, "ip", 1, device="tpu")
    with pytest.raises(ValueError, match="index spec 'Nope'"):
        ShardedIndex("Nope", 4, "ip", 1)


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1"])
def test_unreachable_address_is_named(address):
    pytest.importorskip("ray")
    with pytest.raises(ValueError, match=f"address='{address}': no Ray cluster answered at 127.0.0.1:1 within 0.5 s"):
        connect(address, timeout_s=0.5)


def test_malformed_address_is_refused():
    pytest.importorskip("ray")
    with pytest.raises(ValueError, match="address='headnode'"):
        connect("headnode")


def test_another_cluster_than_the_connected_one_is_refused(ray_cluster):
    gcs = ray_cluster.get_runtime_context().gcs_address
    assert connect(gcs) is ray_cluster  # the cluster this process already uses
    listener = socket.create_server(("127.0.0.1", 0))  # reachable, but another cluster
    try:
        other = f"127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(ValueError, match=f"address='{other}': this process is already connected"):
            connect(other)
    finally:
        listener.close()


def test_distributed_embedding_equals_embed_dataset(ray_cluster, tiny_imagenet_root, tmp_path):
    from embedsearch.embed import embed_dataset, load_model

    model = load_model("test_vit", weights="random")
    _, val = tiny_imagenet(tiny_imagenet_root, model.transform())
    output = distributed.embed_distributed(tiny_imagenet_root, tmp_path / "embedded-val", model="test_vit", weights="random",
                                           split="val", workers=2, batch_size=3)
    vectors, labels = distributed.read_embeddings(output)
    np.testing.assert_allclose(vectors, embed_dataset(model, val, batch_size=4), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(labels, val.targets)
    with pytest.raises(ValueError, match="is not empty"):
        distributed.embed_distributed(tiny_imagenet_root, output, model="test_vit", weights="random")


def test_a_shard_that_lost_its_files_fails_loudly(ray_cluster):
    vectors = np.random.default_rng(3).standard_normal((100, 4), dtype=np.float32)
    index = build_sharded_index("Flat", vectors, "ip", shards=2)
    try:
        for part in (index.storage_dir / "shard-0").glob("part-*.npz"):
            part.unlink()  # as on a node that cannot read storage_dir
        os.kill(shard_pids(index)[0], signal.SIGKILL)
        with pytest.raises(RuntimeError, match="shard-0 holds 0 vectors, expected 50"):
            index.search(vectors[:3], 5)
    finally:
        index.close()
    with pytest.raises(ValueError, match="is closed"):
        index.search(vectors[:3], 5)
