"""Ray: one index sharded over worker actors, and image embedding spread over a cluster (Ray Data).

Ray is imported here only, and only when a function here runs: without it they raise
RayNotInstalledError naming the extra to install (pip install 'embedsearch[ray]').
"""

from __future__ import annotations

import logging
import pickle
import shutil
import socket
import tempfile
import weakref
from pathlib import Path

import faiss
import numpy as np
import torch

from .data import image_folder, is_tiny_imagenet, tiny_imagenet
from .embed import DEFAULT_MODEL, PRECISIONS, embed_images, load_model
from .files import save_npz_atomically, write_atomically
from .index import Index, create_index
from .validation import as_vectors, check_choice

RAY_EXTRA = "ray"
CONNECT_TIMEOUT_S = 10.0  # an explicit address must answer a TCP connection within this time
START_TIMEOUT_S = 120.0  # shard actors must be placed and loaded within this time
MAX_RESTARTS = 3  # a shard actor is restarted (and its task retried) this many times after dying
SHARD_DEVICES = ("cpu", "cuda")
EMBEDDING_SPLITS = ("train", "val")


class RayNotInstalledError(ImportError, RuntimeError):
    """Ray (the `ray` extra) is not installed."""


def _ray():
    try:
        import ray
    except ModuleNotFoundError:
        raise RayNotInstalledError(
            f"the Ray engine needs Ray, which is not installed: pip install 'embedsearch[{RAY_EXTRA}]' "
            f"(the '{RAY_EXTRA}' extra: ray[data])"
        ) from None
    return ray


def connect(address: str | None = None, timeout_s: float = CONNECT_TIMEOUT_S):
    """Connect this process to Ray and return the `ray` module.

    address None reuses this process's connection, else joins the cluster `ray start` left
    running on this machine, else starts a local one; "auto" joins a running cluster or fails;
    "host:port" (a head node's GCS) or "ray://host:port" (Ray Client) joins that cluster, after a
    TCP check that fails within `timeout_s` seconds naming the address, instead of hanging.
    """
    ray = _ray()
    if address is not None:
        if not isinstance(address, str) or not address.strip():
            raise ValueError(f"address={address!r}: expected None, 'auto', 'host:port' or 'ray://host:port'")
        if address != "auto":
            _check_reachable(address, timeout_s)
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if address not in (None, "auto") and not address.startswith("ray://") and not _same_endpoint(address, current):
            raise ValueError(f"address={address!r}: this process is already connected to the Ray cluster at "
                             f"{current}; call ray.shutdown() first to join another")
        return ray
    options = {"logging_level": logging.WARNING}
    if address is None:
        options["include_dashboard"] = False  # a local cluster without the dashboard starts faster
    try:
        ray.init(address=address, **options)
    except ConnectionError as error:
        raise ValueError(f"address={address!r}: no Ray cluster to join ({error}); start one with "
                         "`ray start --head` or pass address=None for a local cluster") from None
    except Exception as error:  # Ray raises a bare Exception when its local node does not start in time
        raise RuntimeError(f"address={address!r}: Ray could not start or join a cluster: {error}") from None
    return ray


def _check_reachable(address: str, timeout_s: float) -> None:
    endpoint = address.removeprefix("ray://")
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address={address!r}: expected 'auto', 'host:port' or 'ray://host:port'")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise ValueError(f"address={address!r}: no Ray cluster answered at {endpoint} within {timeout_s:g} s "
                         f"({error.strerror or type(error).__name__}); start one there with "
                         "`ray start --head` or check the address") from None


def _same_endpoint(address: str, current: str) -> bool:
    def resolved(endpoint: str) -> tuple[str, str]:
        host, _, port = endpoint.rpartition(":")
        try:
            return socket.gethostbyname(host), port
        except OSError:
            return host, port

    return resolved(address) == resolved(current)


class _Shard:
    """A Ray actor's state: an embedsearch Index of one slice, with the global id of each row.

    Everything the shard holds is in its folder (the trained template, then one file per add),
    written before a call returns, so a restarted actor rebuilds the same shard from it.
    """

    def __init__(self, spec: str, d: int, metric: str, device: str, threads: int, folder: str):
        faiss.omp_set_num_threads(threads)
        torch.set_num_threads(threads)
        self.spec, self.d, self.metric, self.device = spec, d, metric, device
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.params: dict[str, int] = {}
        self._load()

    def _load(self) -> None:
        template = self.folder / "trained.pkl"
        if template.is_file():
            self.index: Index = pickle.loads(template.read_bytes())
        else:
            self.index = create_index(self.spec, self.d, self.metric, self.device)
        self.global_ids = np.empty(0, dtype=np.int64)
        self.parts: set[int] = set()
        for part in sorted(self.folder.glob("part-*.npz")):
            with np.load(part) as stored:
                self._add(int(part.stem.split("-")[1]), stored["vectors"], stored["global_ids"])

    def _add(self, part: int, vectors: np.ndarray, global_ids: np.ndarray) -> None:
        self.index.add(vectors)
        self.global_ids = np.concatenate([self.global_ids, global_ids])
        self.parts.add(part)

    def ready(self) -> int:
        return self.index.ntotal

    def set_trained(self, trained: bytes) -> None:
        write_atomically(self.folder / "trained.pkl", lambda stream: stream.write(trained))
        self._load()

    def add(self, part: int, vectors: np.ndarray, global_ids: np.ndarray) -> None:
        if part in self.parts:  # a retried call whose file a restart already reloaded
            return
        save_npz_atomically(self.folder / f"part-{part:08d}.npz", {"vectors": vectors, "global_ids": global_ids})
        self._add(part, vectors, global_ids)

    def reset(self) -> None:
        for part in self.folder.glob("part-*.npz"):
            part.unlink()
        self.index.reset()
        self.global_ids = np.empty(0, dtype=np.int64)
        self.parts = set()

    def search(self, queries: np.ndarray, k: int, params: dict[str, int],
               expected: int) -> tuple[np.ndarray, np.ndarray]:
        if self.index.ntotal != expected:  # never a silently partial answer
            raise RuntimeError(
                f"shard {self.folder.name} holds {self.index.ntotal} vectors, expected {expected}: after a restart "
                f"it could not read all of {str(self.folder)!r}; on a multi-node cluster pass a storage_dir "
                "that every node can read"
            )
        if params != self.params:
            self.index.set_search_params(**params)
            self.params = dict(params)
        distances, local_ids = self.index.search(queries, min(k, self.index.ntotal))
        # IVF returns -1 where the probed lists hold fewer than k vectors: keep it as -1
        return distances, np.where(local_ids >= 0, self.global_ids[np.maximum(local_ids, 0)], -1)

    def nbytes(self) -> int:
        return self.index.nbytes() + self.global_ids.nbytes


def _get(calls: list) -> list:
    """ray.get of shard calls; a shard that stays dead after its restarts becomes a RuntimeError."""
    ray = _ray()
    try:
        return ray.get(calls)
    except ray.exceptions.RayActorError as error:
        raise RuntimeError(f"a shard actor died and has no restarts left (max_restarts): "
                           f"{str(error).splitlines()[0]}") from None


def _check_cluster_fits(ray, name: str, actors: int, threads: int, device: str) -> None:
    """Refuse actors the cluster can never place (they would wait forever): CPUs (threads each) and GPUs."""
    total = ray.cluster_resources()
    need = {"CPU": actors * threads, "GPU": actors if device == "cuda" else 0}
    for resource, amount in need.items():
        if amount > total.get(resource, 0):
            raise ValueError(f"{name}={actors} x threads={threads} on {device}: they need {amount:g} {resource}, "
                             f"the Ray cluster has {total.get(resource, 0):g}")


def _check_integer(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}={value!r}: expected an integer >= {low}")


class ShardedIndex(Index):
    """An index split over `shards` Ray actors, each holding a slice of the vectors; same interface as Index.

    A search fans out to every shard and merges the per-shard top-k with global ids (faiss
    ResultHeap; largest first for "ip"). IVF / PQ shards share one quantizer, trained once here.
    Each shard keeps its data in `storage_dir` (a temporary folder by default; on a multi-node
    cluster a folder every node can read), from which a restarted actor reloads it; a call in
    flight when its actor dies is retried, up to `max_restarts` times.
    """

    def __init__(self, spec: str, d: int, metric: str = "ip", shards: int = 2, device: str = "cpu",
                 threads: int = 1, storage_dir: str | Path | None = None, max_restarts: int = MAX_RESTARTS,
                 address: str | None = None):
        _check_integer("shards", shards, 1)
        _check_integer("threads", threads, 1)
        _check_integer("max_restarts", max_restarts, 0)
        check_choice(device, "device", SHARD_DEVICES)
        template = create_index(spec, d, metric, "cpu")  # validates spec, d, metric; trains the quantizer
        if device == "cuda" and not template.is_trained:
            raise ValueError(f"spec {spec!r} on device='cuda' shards: only specs that need no training "
                             "(Flat, TorchFlat, HNSW) can be sharded over GPUs")
        super().__init__(spec, int(d), metric, torch.device(device))
        ray = connect(address)
        _check_cluster_fits(ray, "shards", int(shards), int(threads), device)
        if storage_dir is None:
            storage_dir = tempfile.mkdtemp(prefix="embedsearch-shards-")
            self._cleanup = weakref.finalize(self, shutil.rmtree, storage_dir, True)
        self.storage_dir = Path(storage_dir)
        self.threads = int(threads)
        self._template = template
        self._trains = not template.is_trained
        self._params: dict[str, int] = {}
        self._counts = [0] * int(shards)
        self._adds = 0
        actor = ray.remote(_Shard).options(num_cpus=threads, num_gpus=1 if device == "cuda" else 0,
                                           max_restarts=max_restarts, max_task_retries=max_restarts)
        self.actors = [actor.remote(spec, self.d, metric, device, self.threads, str(self.storage_dir / f"shard-{i}"))
                       for i in range(shards)]
        try:
            ray.get([shard.ready.remote() for shard in self.actors], timeout=START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            for shard in self.actors:
                ray.kill(shard)
            raise RuntimeError(f"{shards} shard actors did not start within {START_TIMEOUT_S:g} s: the cluster "
                               f"has {ray.available_resources()} free") from None

    @property
    def shards(self) -> int:
        """Number of shard actors."""
        return len(self.actors)

    @property
    def ntotal(self) -> int:
        return sum(self._counts)

    @property
    def is_trained(self) -> bool:
        return self._template.is_trained

    def train(self, vectors: np.ndarray) -> None:
        vectors = as_vectors(vectors, "training vectors", self.d)
        if self.ntotal:
            raise ValueError(f"index {self.spec!r} holds {self.ntotal} vectors: train before add (or reset first)")
        self._template.train(vectors)
        if self._trains:  # one quantizer, trained here, copied to every shard
            trained = pickle.dumps(self._template)
            _get([shard.set_trained.remote(trained) for shard in self.actors])

    def add(self, vectors: np.ndarray) -> None:
        vectors = as_vectors(vectors, "vectors", self.d)
        if not self.is_trained:
            raise ValueError(f"index {self.spec!r} must be trained before add: call train(vectors) first")
        self._check_open()
        first_id = self.ntotal
        slices = np.array_split(np.arange(len(vectors), dtype=np.int64), self.shards)
        _get([self.actors[shard].add.remote(self._adds, vectors[rows[0]:rows[-1] + 1], first_id + rows)
              for shard, rows in enumerate(slices) if len(rows)])
        self._adds += 1
        self._counts = [count + len(rows) for count, rows in zip(self._counts, slices)]

    def reset(self) -> None:
        _get([shard.reset.remote() for shard in self.actors])
        self._counts = [0] * self.shards

    def _check_open(self) -> None:
        if not self.actors:
            raise ValueError(f"sharded index {self.spec!r} is closed: its shard actors were stopped")

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self._check_open()
        ray = _ray()
        queries_ref = ray.put(queries)  # one copy in the object store, read by every shard
        calls = [shard.search.remote(queries_ref, k, self._params, count)
                 for shard, count in zip(self.actors, self._counts) if count]
        heap = faiss.ResultHeap(len(queries), k, keep_max=self.metric == "ip")
        for distances, ids in _get(calls):
            heap.add_result(distances, ids)
        heap.finalize()
        return heap.D, heap.I

    def nbytes(self) -> int:
        """Bytes the shards hold: each shard's index plus 8 bytes of global id per vector."""
        return sum(_get([shard.nbytes.remote() for shard in self.actors]))

    def set_search_params(self, *, nprobe: int | None = None, efSearch: int | None = None) -> None:
        self._template.set_search_params(nprobe=nprobe, efSearch=efSearch)  # validates against the spec
        given = {name: int(value) for name, value in (("nprobe", nprobe), ("efSearch", efSearch)) if value is not None}
        self._params.update(given)

    def close(self) -> None:
        """Stop the shard actors (their files stay in storage_dir unless it was a temporary folder)."""
        ray = _ray()
        for shard in self.actors:
            ray.kill(shard, no_restart=True)
        self.actors = []
        if hasattr(self, "_cleanup"):
            self._cleanup()


def build_sharded_index(spec: str, vectors: np.ndarray, metric: str = "ip", shards: int = 2,
                        address: str | None = None, device: str = "cpu", threads: int = 1,
                        storage_dir: str | Path | None = None) -> ShardedIndex:
    """Return a ShardedIndex of `vectors` over `shards` Ray actors: trained once if needed, then filled.

    Vector i gets global id i, as in build_index; shards hold contiguous slices.
    """
    vectors = as_vectors(vectors, "vectors")
    _check_integer("shards", shards, 1)
    if shards > len(vectors):
        raise ValueError(f"shards={shards}: expected at most one shard per vector ({len(vectors)} vectors)")
    index = ShardedIndex(spec, vectors.shape[1], metric, shards, device, threads, storage_dir, address=address)
    if not index.is_trained:
        index.train(vectors)
    index.add(vectors)
    return index


class _EmbeddingWorker:
    """A Ray Data actor: loads the model once, then embeds batches of image paths like embed_dataset."""

    def __init__(self, model: str, weights: str, device: str, precision: str, threads: int):
        from torchvision.datasets.folder import default_loader  # the loader ImageFolder uses

        torch.set_num_threads(threads)
        self.model = load_model(model, weights, device)
        self.transform = self.model.transform()
        self.precision = precision
        self.loader = default_loader

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa

        images = torch.stack([self.transform(self.loader(str(path))) for path in batch["path"]])
        embeddings = embed_images(self.model, images, self.precision).cpu().numpy()
        return pa.table({"row": batch["row"], "label": batch["label"],
                         "embedding": pa.FixedSizeListArray.from_arrays(embeddings.ravel(), embeddings.shape[1])})


def embed_distributed(root: str | Path, output_dir: str | Path, model: str | None = None,
                      weights: str = "pretrained", split: str = "train", workers: int = 1, batch_size: int = 64,
                      device: str = "cpu", precision: str = "fp32", threads: int = 1,
                      address: str | None = None) -> Path:
    """Embed an image tree on Ray Data; write parquet shards (row, label, embedding) to `output_dir`.

    `root` is an ImageFolder tree (root/<class>/<image>) or a Tiny ImageNet root (its `split`),
    readable by every node. `workers` actors each load `model` (default: the study's DINO
    ViT-S/16) once (one GPU each on device "cuda", else `threads` CPU
    threads) and embed batches of `batch_size` images with the model's own preprocessing, so the
    result equals embed_dataset's to float32 round-off. Read it back with read_embeddings.
    """
    _check_integer("workers", workers, 1)
    _check_integer("batch_size", batch_size, 1)
    _check_integer("threads", threads, 1)
    check_choice(device, "device", SHARD_DEVICES)
    check_choice(precision, "precision", PRECISIONS)
    if precision != "fp32" and device != "cuda":
        raise ValueError(f"precision={precision!r} needs device='cuda' (autocast); use 'fp32' on {device}")
    check_choice(split, "split", EMBEDDING_SPLITS)
    if is_tiny_imagenet(root):
        dataset = tiny_imagenet(root)[EMBEDDING_SPLITS.index(split)]
    elif split != "train":
        raise ValueError(f"split={split!r} selects a Tiny ImageNet split; {str(root)!r} is an ImageFolder tree: "
                         "pass split='train' (its images) or the folder of the split itself")
    else:
        dataset = image_folder(root)
    if len(dataset) == 0:
        raise ValueError(f"root={str(root)!r}: no images found")
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ValueError(f"output_dir={str(output_dir)!r} is not empty: expected a new or empty folder")
    ray = connect(address)
    _check_cluster_fits(ray, "workers", workers, threads, device)
    items = [{"row": row, "path": str(path), "label": int(label)} for row, (path, label) in enumerate(dataset.samples)]
    worker_resources = {"num_cpus": threads, "num_gpus": 1 if device == "cuda" else 0}
    embedded = ray.data.from_items(items).map_batches(
        _EmbeddingWorker, batch_size=batch_size, batch_format="numpy",
        fn_constructor_kwargs=dict(model=model or DEFAULT_MODEL, weights=str(weights), device=device,
                                   precision=precision, threads=threads),
        compute=ray.data.ActorPoolStrategy(size=workers), **worker_resources)
    embedded.write_parquet(str(output_dir))
    return output_dir


def read_embeddings(output_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Return (float32 embeddings (n, d), int64 labels) written by embed_distributed, in image order."""
    import pyarrow.parquet as pq

    files = sorted(Path(output_dir).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{str(output_dir)!r} holds no .parquet shards written by embed_distributed")
    table = pq.ParquetDataset(files).read().sort_by("row")
    rows = table["row"].to_numpy()
    if not np.array_equal(rows, np.arange(len(rows))):
        raise ValueError(f"{str(output_dir)!r}: rows are missing or repeated: expected 0..{len(rows) - 1}")
    embeddings = table["embedding"].combine_chunks()
    vectors = embeddings.flatten().to_numpy().reshape(len(rows), embeddings.type.list_size)
    return np.ascontiguousarray(vectors, dtype=np.float32), table["label"].to_numpy().astype(np.int64)
