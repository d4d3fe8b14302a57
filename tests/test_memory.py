import numpy as np
import pytest
import torch

from embedsearch.data import clustered_embeddings
from embedsearch.index import BF16_SPEC, TORCH_SPEC, build_index, create_index
from embedsearch.memory import (RUNTIME_ALLOWANCE_BYTES, all_pairs_model_bytes, build_model_bytes,
                                exact_search_model_bytes, measure_stage, profile_memory, seed_pass_bytes,
                                vit_embedding_model_bytes)

N, D, NQ, K = 50_000, 128, 1000, 10
LEAK_BUDGET_BYTES = 64 * 2**10  # for 10 repeated calls: far below one leaked result or query copy


@pytest.fixture(scope="module")
def split():
    return clustered_embeddings(N, NQ, D, 50, seed=0)


def test_memray_sees_native_faiss_and_torch_allocations(split):
    index, profile = profile_memory(lambda: build_index("Flat", split.train_vectors))
    assert profile.peak_bytes >= 4 * N * D  # the index's own copy of the vectors, allocated in C++
    _, profile = profile_memory(lambda: torch.ones(N, D))
    assert profile.peak_bytes >= 4 * N * D  # torch's cpu allocator


@pytest.fixture(scope="module", params=["Flat", TORCH_SPEC])
def warm_index(request, split):
    index = build_index(request.param, split.train_vectors, "ip")
    index.search(split.val_vectors, K)  # warm-up: BLAS and thread pools are allocated once per process
    return index


# FAISS: a SIMD loop below its BLAS threshold, BLAS blocks above, reservoirs instead of heaps for k >= 100
@pytest.mark.parametrize("nq, k", [(10, K), (NQ, K), (NQ, 100)])
def test_exact_search_stays_within_its_memory_model(warm_index, split, nq, k):
    budget = exact_search_model_bytes(warm_index, nq, k)
    warm_index.search(split.val_vectors[:nq], k)  # BLAS libraries keep per-shape pools from a first call
    _, profile = profile_memory(lambda: warm_index.search(split.val_vectors[:nq], k) and None)
    assert profile.peak_bytes <= budget


def test_memory_budget_catches_one_extra_copy_of_the_database(warm_index, split):
    budget = exact_search_model_bytes(warm_index, NQ, K)

    def search_with_a_planted_copy():
        planted = split.train_vectors.copy()
        warm_index.search(split.val_vectors, K)
        del planted

    _, profile = profile_memory(search_with_a_planted_copy)
    assert profile.peak_bytes > budget


def test_repeated_search_does_not_leak(warm_index, split):
    _, profile = profile_memory(lambda: [warm_index.search(split.val_vectors, K) for _ in range(10)] and None)
    assert profile.leaked_bytes <= LEAK_BUDGET_BYTES


def test_leak_check_catches_a_planted_leak(warm_index, split):
    kept = []

    def leaky_search():
        distances, ids = warm_index.search(split.val_vectors, K)
        kept.append(ids)  # planted: every call keeps its results alive

    _, profile = profile_memory(lambda: [leaky_search() for _ in range(10)] and None)
    assert profile.leaked_bytes >= 10 * 8 * NQ * K > LEAK_BUDGET_BYTES


def test_repeated_embedding_batches_do_not_leak():
    from embedsearch.embed import embed_images, load_model

    model = load_model("test_vit", weights="random")
    images = torch.randn(8, *model.data_config["input_size"])
    embed_images(model, images)
    _, profile = profile_memory(lambda: [embed_images(model, images) for _ in range(10)] and None)
    assert profile.leaked_bytes <= LEAK_BUDGET_BYTES


def test_profile_keeps_a_capture_file_on_request(tmp_path):
    capture = tmp_path / "run" / "capture.bin"
    _, profile = profile_memory(lambda: float(np.ones(1_000_000).sum()), capture=capture)
    assert profile.capture == capture and capture.stat().st_size > 0
    assert profile.peak_bytes >= 8_000_000 > profile.leaked_bytes  # the array was freed inside the call


def test_measure_stage_reports_seconds_and_peak_rss():
    with measure_stage(torch.device("cpu")) as stage:
        block = np.ones(50_000_000 // 8)
        block[::512] = 2.0
        del block
    assert stage.seconds > 0 and stage.gpu_peak_bytes is None
    if stage.peak_rss_bytes is not None:
        assert stage.peak_rss_bytes >= 50_000_000


@pytest.mark.parametrize("spec", ["Flat", TORCH_SPEC, BF16_SPEC, "IVF64,Flat"])
def test_build_stays_within_its_memory_model(spec, split):
    index = create_index(spec, D, "ip")
    if not index.is_trained:
        create_index(spec, D, "ip").train(split.train_vectors)  # warm-up of BLAS and thread pools
        _, profile = profile_memory(lambda: index.train(split.train_vectors))
        assert profile.peak_bytes <= build_model_bytes(spec, "train", N, D)
    _, profile = profile_memory(lambda: index.add(split.train_vectors))
    model = build_model_bytes(spec, "add", N, D)
    assert 4 * N * D <= profile.peak_bytes <= model  # the stored vectors at least, the model at most


def test_build_memory_model_is_stated_only_where_derived():
    assert build_model_bytes("HNSW32", "add", N, D) is None
    assert build_model_bytes("IVF64,PQ16", "train", N, D) is None
    with pytest.raises(ValueError, match="stage='search'.*'train' or 'add'"):
        build_model_bytes("Flat", "search", N, D)


@pytest.mark.parametrize("batch_size", [1, 8])
def test_vit_embedding_stays_within_its_activation_model(batch_size):
    from embedsearch.embed import embed_images, load_model

    model = load_model("test_vit", weights="random")
    images = torch.randn(batch_size, *model.data_config["input_size"])
    embed_images(model, images)
    _, profile = profile_memory(lambda: [embed_images(model, images)] and None)
    budget = vit_embedding_model_bytes(model, batch_size)
    # the model names what is alive at the peak: it holds without being loose
    assert budget - RUNTIME_ALLOWANCE_BYTES <= profile.peak_bytes <= budget


def test_vit_embedding_model_refuses_other_architectures():
    from embedsearch.embed import load_model

    with pytest.raises(ValueError, match="ResNet.*VisionTransformer"):
        vit_embedding_model_bytes(load_model("test_resnet", weights="random"), 8)


def test_bf16_search_stays_within_its_memory_model(split):
    index = build_index(BF16_SPEC, split.train_vectors, "ip")
    index.search(split.val_vectors, K)
    _, profile = profile_memory(lambda: index.search(split.val_vectors, K) and None)
    assert index.score_buffer_bytes(NQ) <= profile.peak_bytes <= exact_search_model_bytes(index, NQ, K)


def test_bf16_seed_pass_stays_within_its_memory_model(split):
    index = build_index(BF16_SPEC, split.train_vectors, "ip")  # 49 windows of 1021 rows or 1020
    state = index._pair_state(K + 1)
    buffer = index._pair_buffer()
    left, right = index._operand_blocks()
    seed = lambda: index._seed_thresholds(state, K + 1, buffer, left, right)  # noqa: E731
    seed()
    _, profile = profile_memory(seed)
    sample, centroids = index.SEED_SAMPLE, index.SEED_CENTROIDS
    # at least the k-means sample in float32 beside its float32 scores against the centroids
    assert sample * 4 * (D + centroids) <= profile.peak_bytes <= seed_pass_bytes(index, K + 1)


def test_bf16_all_pairs_stays_within_its_memory_model(split):
    vectors = split.train_vectors[:20_000]  # 5 x 5 blocks of 4096 rows: both orientations, partial blocks
    index = build_index(BF16_SPEC, vectors, "ip")
    index.all_pairs_search(K + 1)
    _, profile = profile_memory(lambda: index.all_pairs_search(K + 1) and None)
    # the pair buffer and every row's candidates are alive together through the scan
    alive = index.pair_buffer_bytes() + 12 * len(vectors) * index.candidate_capacity(K + 1)
    assert alive <= profile.peak_bytes <= all_pairs_model_bytes(index, K + 1)
