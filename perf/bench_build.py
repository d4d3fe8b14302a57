"""Index build: training time (IVF, PQ) and add time, per spec x N x d x device, with index bytes."""

from embedsearch.device import resolve_device, synchronize
from embedsearch.fields import BYTES_VS_THEORY, THEORY_BYTES, VECTORS_PER_S
from embedsearch.index import create_index
from embedsearch.memory import build_model_bytes
from index_bytes import theoretical_index_bytes
from memory_pass import memory_pass
from records import median_seconds, record


def rounds_for(n: int) -> int:
    return 5 if n <= 100_000 else 1


def host_model_bytes(case, stage: str, device: str) -> int | None:
    """The stated memory model of a build stage on cpu (None on cuda or for unmodelled specs)."""
    return build_model_bytes(case.spec, stage, case.n, case.d, case.metric) if device == "cpu" else None


def test_build_train(benchmark, train_case, device, data, threads, pytestconfig):
    database = data.database(train_case)

    def fresh_index():
        return (create_index(train_case.spec, train_case.d, train_case.metric, device),), {}

    def train(index):
        index.train(database)
        synchronize(resolve_device(device))
        return index

    benchmark.group = f"build-train n={train_case.n} d={train_case.d} {train_case.data} {device}"
    index = benchmark.pedantic(train, setup=fresh_index, rounds=rounds_for(train_case.n))
    assert index.is_trained
    memory_pass(benchmark, pytestconfig, lambda: train(fresh_index()[0][0]), device,
                model_bytes=host_model_bytes(train_case, "train", device))
    seconds = median_seconds(benchmark)
    record(benchmark, threads, stage="train", spec=train_case.spec, n=train_case.n, d=train_case.d,
           metric=train_case.metric, device=device, dtype="float32", **data.dataset_record(train_case),
           **({VECTORS_PER_S: train_case.n / seconds} if seconds else {}))


def test_build_add(benchmark, build_case, device, data, threads, pytestconfig):
    database = data.database(build_case)
    index = create_index(build_case.spec, build_case.d, build_case.metric, device)
    if not index.is_trained:
        index.train(database)  # training is timed by test_build_train

    def emptied():
        index.reset()  # releases the vectors' memory, so every round allocates afresh
        return (), {}

    def add():
        index.add(database)
        synchronize(resolve_device(device))

    benchmark.group = f"build-add n={build_case.n} d={build_case.d} {build_case.data} {device}"
    benchmark.pedantic(add, setup=emptied, rounds=rounds_for(build_case.n))
    assert index.ntotal == build_case.n
    index_bytes = index.nbytes()
    memory_pass(benchmark, pytestconfig, add, device, prepare=index.reset,
                model_bytes=host_model_bytes(build_case, "add", device))
    seconds = median_seconds(benchmark)
    theory = theoretical_index_bytes(build_case.spec, build_case.n, build_case.d)
    record(benchmark, threads, stage="add", spec=build_case.spec, n=build_case.n, d=build_case.d,
           metric=build_case.metric, device=device, dtype="float32", index_bytes=index_bytes,
           **data.dataset_record(build_case),
           **({THEORY_BYTES: theory, BYTES_VS_THEORY: index_bytes / theory} if theory else {}),
           **({VECTORS_PER_S: build_case.n / seconds} if seconds else {}))
