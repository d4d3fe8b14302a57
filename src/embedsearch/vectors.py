"""Standard vector files read as a data set (database, queries, ground truth), after faiss.contrib.datasets.

Formats: ann-benchmarks HDF5 (`train`, `test`, `neighbors`, `distances`, attribute `distance`),
texmex .fvecs / .ivecs / .bvecs, big-ann .fbin / .u8bin / .i8bin / .ibin and its ground-truth .bin
(int32 n, k, then n*k int32 ids, then n*k float32 distances), .npy / .npz, and the file that
`embedsearch run --embeddings` writes. Opening a file maps it (np.memmap, h5py) and checks its
header and size; vectors are converted to float32 in blocks of BLOCK_ROWS rows when asked for.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .files import save_npz_atomically
from .index import build_index

BLOCK_ROWS = 65_536  # rows converted to float32 at a time: a 1M x 384 file is never copied whole but once
TRUTH_DEPTH = 100  # computed ground truth is searched this deep once and sliced for smaller k
TRUTH_CHECK_QUERIES = 32  # stored ground truth is checked against exact search on this many queries
HELD_OUT_QUERIES = 1000  # a file without queries gives up its last rows (at most a tenth) as queries
HDF5_METRICS = {"angular": ("ip", True), "euclidean": ("l2", False), "dot": ("ip", False)}  # -> (metric, normalise)
BIN_DTYPES = {".fbin": np.float32, ".u8bin": np.uint8, ".i8bin": np.int8, ".ibin": np.int32}
VECS_DTYPES = {".fvecs": np.float32, ".ivecs": np.int32, ".bvecs": np.uint8}


class VectorFileError(ValueError):
    """A vector file that cannot be read as its format says; the message names the file and the fault."""

    def __init__(self, path: Path | str, problem: str):
        super().__init__(f"{path}: {problem}")


# ---- single arrays -----------------------------------------------------------------------------

def read_vectors(path: str | Path) -> np.ndarray:
    """Return the (n, d) array of a .fvecs/.ivecs/.bvecs, .fbin/.u8bin/.i8bin/.ibin or .npy file, memory-mapped."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such vector file")
    if suffix in VECS_DTYPES:
        return _read_vecs(path, np.dtype(VECS_DTYPES[suffix]))
    if suffix in BIN_DTYPES:
        return _read_bin(path, np.dtype(BIN_DTYPES[suffix]))
    if suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as error:
            raise VectorFileError(path, f"not a readable .npy file ({error})") from None
        if array.ndim != 2:
            raise VectorFileError(path, f"expected a 2-D (n, d) array, got shape {array.shape}")
        return array
    raise VectorFileError(path, f"unknown vector file type {suffix!r}: expected one of "
                                f"{', '.join(sorted([*VECS_DTYPES, *BIN_DTYPES, '.npy', '.npz', '.hdf5']))}")


def _read_vecs(path: Path, dtype: np.dtype) -> np.ndarray:
    """texmex: each record is int32 d, then d components."""
    size = path.stat().st_size
    if size < 4:
        raise VectorFileError(path, f"truncated: file size {size} holds no record header (4 bytes)")
    d = int(np.fromfile(path, dtype="<i4", count=1)[0])
    if d < 1:
        raise VectorFileError(path, f"first record header says d={d}: expected d >= 1")
    record = 4 + d * dtype.itemsize
    if size % record:
        raise VectorFileError(path, f"truncated: file size {size} is not a whole number of {record}-byte records "
                                    f"(4 + d*{dtype.itemsize} for d={d}); the last record has {size % record} bytes")
    n = size // record
    raw = np.memmap(path, dtype=np.uint8, mode="r", shape=(n, record))
    headers = np.ascontiguousarray(raw[:, :4]).view("<i4").ravel()
    changed = np.flatnonzero(headers != d)
    if changed.size:
        row = int(changed[0])
        raise VectorFileError(path, f"record {row} (byte offset {row * record}) has d={int(headers[row])}, "
                                    f"the first record has d={d}: every record must have the same d")
    return raw[:, 4:].view(dtype.newbyteorder("<"))


def _read_bin(path: Path, dtype: np.dtype) -> np.ndarray:
    """big-ann: int32 n, int32 d, then n*d components."""
    n, d = _bin_header(path, "n", "d")
    expected = 8 + n * d * dtype.itemsize
    _check_size(path, expected, f"8 + n*d*{dtype.itemsize} for n={n}, d={d}")
    if n == 0 or d == 0:
        raise VectorFileError(path, f"header says n={n}, d={d}: expected at least one vector of one component")
    return np.memmap(path, dtype=dtype.newbyteorder("<"), mode="r", offset=8, shape=(n, d))


def _bin_header(path: Path, first: str, second: str) -> tuple[int, int]:
    size = path.stat().st_size
    if size < 8:
        raise VectorFileError(path, f"truncated: file size {size} is smaller than the 8-byte header ({first}, {second})")
    a, b = (int(value) for value in np.fromfile(path, dtype="<i4", count=2))
    if a < 0 or b < 0:
        raise VectorFileError(path, f"header says {first}={a}, {second}={b}: expected non-negative counts")
    return a, b


def _check_size(path: Path, expected: int, formula: str) -> None:
    size = path.stat().st_size
    if size < expected:
        raise VectorFileError(path, f"truncated: file size {size} is less than {formula} = {expected}")
    if size > expected:
        raise VectorFileError(path, f"file size {size} is not {formula} = {expected}")


def read_bin_groundtruth(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Return (distances float32 (n, k), ids int32 (n, k)) of a big-ann ground-truth .bin file, memory-mapped."""
    path = Path(path)
    n, k = _bin_header(path, "n", "k")
    _check_size(path, 8 + n * k * 8, f"8 + n*k*8 (ids, then distances) for n={n}, k={k}")
    ids = np.memmap(path, dtype="<i4", mode="r", offset=8, shape=(n, k))
    distances = np.memmap(path, dtype="<f4", mode="r", offset=8 + n * k * 4, shape=(n, k))
    return distances, ids


# ---- writers (fixtures, round trips) -----------------------------------------------------------

def write_vectors(path: str | Path, vectors: np.ndarray) -> None:
    """Write (n, d) `vectors` in the format of `path`'s suffix (texmex, big-ann or .npy)."""
    path = Path(path)
    suffix = path.suffix.lower()
    vectors = np.asarray(vectors)
    if suffix == ".npy":
        np.save(path, vectors)
        return
    dtype = np.dtype({**VECS_DTYPES, **BIN_DTYPES}.get(suffix, np.void))
    if dtype == np.void:
        raise ValueError(f"{path}: cannot write vector file type {suffix!r}")
    vectors = vectors.astype(dtype.newbyteorder("<"))
    with open(path, "wb") as file:
        if suffix in VECS_DTYPES:
            headers = np.full((len(vectors), 1), vectors.shape[1], dtype="<i4").view(np.uint8)
            file.write(np.hstack([headers, vectors.view(np.uint8).reshape(len(vectors), -1)]).tobytes())
        else:
            file.write(np.array(vectors.shape, dtype="<i4").tobytes() + vectors.tobytes())


def write_bin_groundtruth(path: str | Path, distances: np.ndarray, ids: np.ndarray) -> None:
    """Write a big-ann ground-truth .bin: int32 n, k, int32 ids, float32 distances."""
    with open(path, "wb") as file:
        file.write(np.array(ids.shape, dtype="<i4").tobytes() + ids.astype("<i4").tobytes()
                   + distances.astype("<f4").tobytes())


# ---- data sets ---------------------------------------------------------------------------------

@dataclass
class VectorDataset:
    """A database, its queries and their ground truth from a file; faiss.contrib.datasets' interface.

    `metric` is "l2" (squared L2) or "ip"; `normalize` means vectors are L2-normalised on reading
    (ann-benchmarks' angular: inner product on normalised vectors). `query_source` says where the
    queries came from. `labels` (train, val) exist only for `embedsearch run --embeddings` files.
    """

    path: Path
    database: object  # (n, d) array-like: np.memmap, np.ndarray or h5py.Dataset, any numeric dtype
    queries: object
    metric: str
    normalize: bool
    query_source: str
    stored_ids: np.ndarray | None = None  # ground-truth ids stored with the data, (nq, k)
    truth_source: str = ""
    labels: tuple[np.ndarray, np.ndarray] | None = None
    n_classes: int | None = None
    cache_dir: Path | None = None
    _arrays: dict = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def n(self) -> int:
        return int(self.database.shape[0])

    @property
    def d(self) -> int:
        return int(self.database.shape[1])

    @property
    def nq(self) -> int:
        return int(self.queries.shape[0])

    @property
    def content_hash(self) -> str:
        """The first 12 hex digits of the SHA-256 of the file's bytes (read in 1 MiB blocks, once)."""
        if "hash" not in self._arrays:
            self._arrays["hash"] = file_hash(self.path)
        return self._arrays["hash"]

    @property
    def label(self) -> str:
        """File name and content hash: how benchmark ids and records name this data set."""
        return f"{self.name}-{self.content_hash}"

    def get_database(self) -> np.ndarray:
        """All database vectors as float32 C-contiguous (normalised when angular), converted once."""
        if "database" not in self._arrays:
            self._arrays["database"] = to_float32(self.database, self.path, "database", self.normalize)
        return self._arrays["database"]

    def get_queries(self) -> np.ndarray:
        """All queries as float32 C-contiguous (normalised when angular)."""
        if "queries" not in self._arrays:
            self._arrays["queries"] = to_float32(self.queries, self.path, "queries", self.normalize)
        return self._arrays["queries"]

    def get_groundtruth(self, k: int | None = None) -> np.ndarray:
        """Ids (nq, k) of each query's exact k nearest database vectors: stored (and checked) or computed once."""
        _, ids = self.groundtruth()
        if k is not None and not 1 <= k <= ids.shape[1]:
            raise ValueError(f"k={k}: the ground truth of {self.name} is {ids.shape[1]} deep")
        return ids[:, :k]

    def groundtruth(self) -> tuple[np.ndarray, np.ndarray]:
        """(float32 distances in this data set's metric, int64 ids), nq x depth, best first.

        Stored ground truth is range-checked and compared with exact search on a sample of
        queries first; its distances are recomputed here (files store them in other conventions,
        e.g. ann-benchmarks' angular 1 - cos). Otherwise it is computed once and cached.
        """
        if "truth" not in self._arrays:
            self._arrays["truth"] = self._checked_stored_truth() if self.stored_ids is not None \
                else self._computed_truth()
        return self._arrays["truth"]

    def _checked_stored_truth(self) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(self.stored_ids, dtype=np.int64)
        where = self.truth_source or str(self.path)
        if ids.ndim != 2 or ids.shape[0] != self.nq:
            raise VectorFileError(where, f"ground truth has shape {ids.shape}: expected ({self.nq}, k), "
                                         f"one row per query")
        outside = (ids < 0) | (ids >= self.n)
        if outside.any():
            query, rank = (int(i) for i in np.argwhere(outside)[0])
            raise VectorFileError(where, f"ground-truth id {ids[query, rank]} (query {query}, rank {rank}) is outside "
                                         f"0..{self.n - 1}: the database has {self.n} vectors")
        database, queries = self.get_database(), self.get_queries()
        check_groundtruth(database, queries, ids, self.metric, where)
        return distances_of(database, queries, ids, self.metric), ids

    def _computed_truth(self) -> tuple[np.ndarray, np.ndarray]:
        depth = min(TRUTH_DEPTH, self.n)
        cache = None
        if self.cache_dir is not None:
            cache = self.cache_dir / f"truth-{self.content_hash}-{self.metric}-q{self.nq}-k{depth}.npz"
            if cache.is_file():
                with np.load(cache) as stored:
                    return stored["distances"], stored["ids"]
        distances, ids = build_index("Flat", self.get_database(), self.metric).search(self.get_queries(), depth)
        if cache is not None:
            save_npz_atomically(cache, {"distances": distances, "ids": ids})
        return distances, ids

    def record(self) -> dict:
        """What a benchmark record says of this data set."""
        return {"dataset": self.name, "dataset_hash": self.content_hash, "dataset_n": self.n, "dataset_d": self.d,
                "normalized": self.normalize, "query_source": self.query_source,
                "truth_source": self.truth_source or "computed: exact FAISS Flat search"}


def file_hash(path: Path) -> str:
    """The first 12 hex digits of the SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(2**20):
            digest.update(block)
    return digest.hexdigest()[:12]


def to_float32(array, path: Path, name: str, normalize: bool) -> np.ndarray:
    """Convert `array` (any numeric (n, d) array-like) to float32 C-contiguous in blocks; refuse NaN/inf rows."""
    n, d = array.shape
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, BLOCK_ROWS):
        block = np.asarray(array[start:start + BLOCK_ROWS])
        if not (np.issubdtype(block.dtype, np.floating) or np.issubdtype(block.dtype, np.integer)):
            raise VectorFileError(path, f"{name} have dtype {block.dtype}: expected numbers")
        out[start:start + len(block)] = block
    finite = np.isfinite(out.sum(axis=1, dtype=np.float64))
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise VectorFileError(path, f"{name}: {bad.size} row(s) hold NaN or inf (first at row {bad[0]}): "
                                    f"expected finite values")
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        if (norms == 0).any():
            raise VectorFileError(path, f"{name}: row {int(np.flatnonzero(norms == 0)[0])} is all zeros: "
                                        f"an angular data set cannot normalise it")
        out /= norms
    return out


def check_groundtruth(database: np.ndarray, queries: np.ndarray, ids: np.ndarray, metric: str, where,
                      sample: int = TRUTH_CHECK_QUERIES) -> None:
    """Raise unless stored ground-truth ids match exact search on `sample` evenly spread queries.

    Compared by distance, not id, so ties may be broken either way: the distances of the stored
    ids, recomputed here, must equal our exact k best distances to 1e-4 relative to the k-th
    distance's scale.
    """
    k = min(ids.shape[1], len(database))
    rows = np.unique(np.linspace(0, len(queries) - 1, min(sample, len(queries))).astype(np.int64))
    exact = exact_distances(database, queries[rows], k, metric)
    recomputed = distances_of(database, queries[rows], ids[rows], metric)
    for query, row in enumerate(rows):
        stored = np.sort(recomputed[query])[::-1] if metric == "ip" else np.sort(recomputed[query])
        tolerance = 1e-4 * max(1.0, float(np.abs(exact[query]).max()))
        wrong = np.flatnonzero(np.abs(stored - exact[query]) > tolerance)
        if wrong.size:
            rank = int(wrong[0])
            raise VectorFileError(
                where, f"stored ground truth disagrees with exact {metric} search at query {row}, rank {rank}: "
                       f"the stored neighbours' {rank + 1}-th best distance is {stored[rank]:.6g}, exact search "
                       f"finds {exact[query][rank]:.6g} (checked {len(rows)} queries)")


def exact_distances(database: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    """The k best distances of each query, best first, by brute force over BLOCK_ROWS database rows at a time.

    NumPy, not an index: checking a few queries must not copy a large database into FAISS.
    """
    best = np.empty((len(queries), 0), dtype=np.float32)
    query_norms = (queries.astype(np.float64) ** 2).sum(1)[:, None]
    for start in range(0, len(database), BLOCK_ROWS):
        block = database[start:start + BLOCK_ROWS]
        products = queries @ block.T
        scores = -products if metric == "ip" else query_norms + (block.astype(np.float64) ** 2).sum(1) - 2 * products
        candidates = np.concatenate([best, scores.astype(np.float32)], axis=1)
        best = np.sort(candidates, axis=1)[:, :k]
    return -best if metric == "ip" else best


def distances_of(database: np.ndarray, queries: np.ndarray, ids: np.ndarray, metric: str,
                 block: int = 256) -> np.ndarray:
    """float32 (nq, k) distances ("l2": squared L2, "ip": inner product) of each query to its listed ids."""
    out = np.empty(ids.shape, dtype=np.float32)
    for start in range(0, len(queries), block):
        neighbors = database[ids[start:start + block]]  # (block, k, d): bounded by `block`
        query = queries[start:start + block, None, :]
        out[start:start + block] = (neighbors * query).sum(-1) if metric == "ip" else \
            ((neighbors - query) ** 2).sum(-1)
    return out


def open_dataset(path: str | Path, queries: str | Path | None = None, groundtruth: str | Path | None = None,
                 metric: str | None = None, cache_dir: str | Path | None = None) -> VectorDataset:
    """Open a vector file as a data set; a texmex X_base.fvecs finds X_query.fvecs and X_groundtruth.ivecs beside it.

    `metric` ("l2" or "ip") is needed only where the file does not say it: HDF5 files carry it,
    `embedsearch run` files are inner product on normalised vectors, others default to "l2".
    Without queries, the last min(HELD_OUT_QUERIES, n // 10) rows are held out as queries.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such vector file")
    if metric is not None and metric not in ("l2", "ip"):
        raise ValueError(f"metric={metric!r}: expected 'l2' or 'ip'")
    cache_dir = Path(cache_dir) if cache_dir is not None else None
    suffix = path.suffix.lower()
    if suffix in (".hdf5", ".h5"):
        dataset = _open_hdf5(path)
    elif suffix == ".npz":
        dataset = _open_npz(path, metric)
    else:
        database = read_vectors(path)
        if queries is None and groundtruth is None and path.stem.endswith("_base") and suffix in VECS_DTYPES:
            stem = path.stem[:-len("_base")]
            sibling_queries = path.with_name(f"{stem}_query{suffix}")
            sibling_truth = path.with_name(f"{stem}_groundtruth.ivecs")
            queries = sibling_queries if sibling_queries.is_file() else None
            groundtruth = sibling_truth if queries is not None and sibling_truth.is_file() else None
        dataset = VectorDataset(path, database, None, metric or "l2", False, "")
        if queries is not None:
            dataset.queries = read_vectors(queries)
            dataset.query_source = f"file {Path(queries).name}"
    if dataset.queries is None:
        held_out = min(HELD_OUT_QUERIES, dataset.n // 10)
        if held_out < 1:
            raise VectorFileError(path, f"{dataset.n} vectors and no queries: expected at least 10 vectors "
                                        "to hold a tenth out as queries")
        dataset.queries = dataset.database[dataset.n - held_out:]
        dataset.database = dataset.database[:dataset.n - held_out]
        dataset.query_source = f"held out: the last {held_out} rows of {path.name}"
    if dataset.queries.shape[1] != dataset.d:
        raise VectorFileError(path, f"queries have d={dataset.queries.shape[1]}, the database d={dataset.d}")
    if groundtruth is not None:
        groundtruth = Path(groundtruth)
        if groundtruth.suffix.lower() == ".ivecs":
            dataset.stored_ids = read_vectors(groundtruth)
        else:
            dataset.stored_ids = read_bin_groundtruth(groundtruth)[1]
        dataset.truth_source = str(groundtruth)
    dataset.cache_dir = cache_dir
    return dataset


def _open_hdf5(path: Path) -> VectorDataset:
    try:
        import h5py
    except ImportError:
        raise ImportError(f"{path}: reading ann-benchmarks HDF5 needs h5py: pip install -e '.[vectors]'") from None

    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise VectorFileError(path, f"not a readable HDF5 file ({error})") from None
    for name in ("train", "test"):
        if name not in file:
            raise VectorFileError(path, f"has no dataset {name!r}: expected ann-benchmarks' 'train' and 'test' "
                                        f"(with 'neighbors', 'distances'); found {sorted(file.keys())}")
        if file[name].ndim != 2:
            raise VectorFileError(path, f"dataset {name!r} has shape {file[name].shape}: expected (n, d)")
    distance = file.attrs.get("distance")
    if distance is None:
        raise VectorFileError(path, f"has no 'distance' attribute: expected one of {sorted(HDF5_METRICS)}")
    distance = distance.decode() if isinstance(distance, bytes) else str(distance)
    if distance not in HDF5_METRICS:
        raise VectorFileError(path, f"distance={distance!r}: expected one of {sorted(HDF5_METRICS)}")
    metric, normalize = HDF5_METRICS[distance]
    dataset = VectorDataset(path, file["train"], file["test"], metric, normalize, "file: its 'test' dataset")
    if "neighbors" in file:
        dataset.stored_ids = file["neighbors"][:]  # its 'distances' use ann-benchmarks' conventions: recomputed
        dataset.truth_source = f"{path}: 'neighbors'"
    return dataset


def _open_npz(path: Path, metric: str | None) -> VectorDataset:
    try:
        stored = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise VectorFileError(path, f"not a readable .npz file ({error})") from None
    names = set(stored.files)
    if {"train_vectors", "val_vectors", "train_labels", "val_labels"} <= names:  # embedsearch run --embeddings
        dataset = VectorDataset(path, stored["train_vectors"], stored["val_vectors"], metric or "ip", False,
                                "file: its val embeddings")
        dataset.labels = (stored["train_labels"].astype(np.int64), stored["val_labels"].astype(np.int64))
        dataset.n_classes = int(stored["n_classes"])
        return dataset
    for database_name, queries_name in (("train", "test"), ("database", "queries")):
        if database_name in names:
            dataset = VectorDataset(path, stored[database_name], stored[queries_name] if queries_name in names else None,
                                    metric or "l2", False, f"file: its {queries_name!r} array")
            if "neighbors" in names and queries_name in names:
                dataset.stored_ids = stored["neighbors"]
                dataset.truth_source = f"{path}: 'neighbors'"
            return dataset
    if len(names) == 1:
        return VectorDataset(path, stored[names.pop()], None, metric or "l2", False, "")
    raise VectorFileError(path, f"arrays {sorted(names)}: expected 'train' (+ 'test', 'neighbors'), 'database' "
                                "(+ 'queries'), one array, or an `embedsearch run --embeddings` file")
