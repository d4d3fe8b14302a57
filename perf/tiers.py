"""The benchmark grids of each tier: which cases every stage's benchmarks run."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from embedsearch.index import BF16_SPEC, TORCH_SPEC

BRUTE_FORCE_SPECS = ("Flat", TORCH_SPEC, BF16_SPEC)  # exact backends side by side on the same data


@dataclass(frozen=True)
class EmbedCase:
    model: str
    batch_size: int
    precision: str = "fp32"

    @property
    def id(self) -> str:
        return f"{self.model}-b{self.batch_size}-{self.precision}"


@dataclass(frozen=True)
class IndexCase:
    """An index over the first n database vectors of data set `data`, of dimension d.

    `data` is a synthetic preset ("embedding", "hard": embedsearch.data.SYNTHETIC_PRESETS) or a
    --perf-data file's label (file name and content hash); it is part of the id, so runs on
    different data never share a benchmark id (the gate and history compare by id).
    """

    spec: str
    n: int
    d: int
    metric: str = "ip"
    data: str = "embedding"

    @property
    def id(self) -> str:
        return f"{self.spec}-n{self.n}-d{self.d}-{self.metric}-{self.data}"


@dataclass(frozen=True)
class SearchCase:
    index: IndexCase
    k: int
    nq: int
    params: tuple[tuple[str, int], ...] = ()

    @property
    def id(self) -> str:
        params = "".join(f"-{name}{value}" for name, value in self.params)
        return f"{self.index.id}-k{self.k}-nq{self.nq}{params}"


@dataclass(frozen=True)
class KnnCase:
    n_train: int
    n_val: int
    d: int
    n_classes: int
    k: int
    vote: str
    data: str = "hard"  # the clustered mixture (its labels are the classes), or a --perf-data file's label
    spec: str = "Flat"  # the exact index searched (leave-one-out)

    @property
    def id(self) -> str:
        suffix = "" if self.data == "hard" else f"-{self.data}"
        spec = "" if self.spec == "Flat" else f"-{self.spec}"  # Flat keeps the names of saved runs
        return f"n{self.n_train}-v{self.n_val}-d{self.d}-c{self.n_classes}-k{self.k}-{self.vote}{suffix}{spec}"


@dataclass(frozen=True)
class DistributedSearchCase:
    """Exact search over `workers` Ray shards of one thread each: strong scaling holds N fixed at n,
    weak scaling gives each worker n_per_worker vectors."""

    scaling: str  # "strong" or "weak"
    workers: int
    n: int
    d: int
    nq: int
    k: int

    @property
    def id(self) -> str:
        return f"{self.scaling}-w{self.workers}-n{self.n}-d{self.d}-k{self.k}-nq{self.nq}"


@dataclass(frozen=True)
class DistributedEmbedCase:
    """embed_distributed of `images` digits images with `workers` Ray Data actors of one thread each."""

    model: str
    images: int
    workers: int
    batch_size: int = 16

    @property
    def id(self) -> str:
        return f"{self.model}-i{self.images}-w{self.workers}-b{self.batch_size}"


@dataclass(frozen=True)
class Tier:
    embed: list[EmbedCase]
    build: list[IndexCase]
    search: list[SearchCase]
    brute_force: list[SearchCase]
    knn: list[KnnCase]
    leave_one_out: list[KnnCase]
    end_to_end: list[dict] = field(default_factory=list)  # digits through a pretrained model: model, image_size, k, rounds
    scaling: list[SearchCase] = field(default_factory=list)  # one search at growing n: time vs n
    distributed_search: list[DistributedSearchCase] = field(default_factory=list)
    distributed_embed: list[DistributedEmbedCase] = field(default_factory=list)
    # --benchmark-max-time of a timed run unless the command line gives one: the seconds of rounds
    # pytest-benchmark times per fast benchmark; None: its own default (1 s)
    max_time_s: float | None = None


def tier_name(config: pytest.Config) -> str:
    """The --perf-tier in force: explicit, else 'default' when timing and 'smoke' when not."""
    return config.getoption("perf_tier") or ("default" if config.getoption("benchmark") else "smoke")


def approximate_specs(n: int, d: int) -> dict[str, tuple[str, list[int]]]:
    """Approximate index specs sized for n vectors of dimension d, each with its search-parameter sweep."""
    nlist = 64 if n <= 10_000 else 256 if n <= 200_000 else 4096
    return {
        f"IVF{nlist},Flat": ("nprobe", sorted({1, 4, 16, nlist // 4})),
        "HNSW32": ("efSearch", [16, 64, 256]),
        f"IVF{nlist},PQ{d // 8}x4fs": ("nprobe", sorted({4, 16, nlist // 4})),  # 4-bit fast-scan PQ: d/8 bytes
    }


def search_grid(sizes: list[tuple[int, int]], ks: list[int], nq: int, data: str = "embedding",
                metric: str = "ip", specs=approximate_specs, sweep_ks: list[int] | None = None) -> list[SearchCase]:
    """Exact search at every k and each approximate sweep (every parameter) at every k in sweep_ks (default: ks).

    Ordered index by index, so that each index is built once (perf/index_cache.py keeps the last one).
    """
    cases = []
    for n, d in sizes:
        for spec in ("Flat", "TorchFlat"):
            cases += [SearchCase(IndexCase(spec, n, d, metric, data), k, nq) for k in ks]
        for spec, (param, values) in specs(n, d).items():
            cases += [SearchCase(IndexCase(spec, n, d, metric, data), k, nq, ((param, value),))
                      for k in (ks if sweep_ks is None else sweep_ks) for value in values]
    return cases


def build_grid(sizes: list[tuple[int, int]], data: str = "embedding", metric: str = "ip",
               specs=approximate_specs) -> list[IndexCase]:
    return [IndexCase(spec, n, d, metric, data) for n, d in sizes for spec in ("Flat", "TorchFlat", *specs(n, d))]


def scaling_grid(sizes: list[int], d: int, nq: int, nlist: int | None, nprobe: int = 0, data: str = "embedding",
                 metric: str = "ip") -> list[SearchCase]:
    """Exact and (unless nlist is None) IVF search at each n, everything else fixed: the exponent of time vs n."""
    specs = (("Flat", ()), ("TorchFlat", ()), *(((f"IVF{nlist},Flat", (("nprobe", nprobe),)),) if nlist else ()))
    return [SearchCase(IndexCase(spec, n, d, metric, data), 10, nq, params) for spec, params in specs for n in sizes]


def distributed_grid(n: int, d: int, nq: int, workers: list[int]) -> list[DistributedSearchCase]:
    """Strong scaling at N = n and weak scaling at N = n / max(workers) per worker, for each worker count."""
    per_worker = n // max(workers)
    return [DistributedSearchCase(scaling, w, n if scaling == "strong" else per_worker * w, d, nq, 10)
            for scaling in ("strong", "weak") for w in workers]


def knn_grid(shape: tuple[int, int, int, int], ks: list[int]) -> list[KnnCase]:
    return [KnnCase(*shape, k, vote) for k in ks for vote in ("majority", "weighted")]


SMOKE = Tier(
    embed=[EmbedCase("test_vit", 8), EmbedCase("test_vit", 8, "bf16")],
    build=build_grid([(5_000, 64)]),
    search=search_grid([(5_000, 64)], [10], nq=200),
    brute_force=[SearchCase(IndexCase(spec, 5_000, 64), 10, 200) for spec in BRUTE_FORCE_SPECS],
    knn=knn_grid((5_000, 500, 64, 20), [10]),
    leave_one_out=[KnnCase(5_000, 0, 64, 20, 10, "weighted", spec=spec) for spec in ("Flat", BF16_SPEC)],
    end_to_end=[dict(model="efficientnet_lite0", image_size=32, k=10, rounds=1)],
    scaling=scaling_grid([2_500, 5_000, 10_000, 20_000], 64, nq=200, nlist=64, nprobe=8),
    distributed_search=distributed_grid(5_000, 64, nq=200, workers=[1, 2]),
    distributed_embed=[DistributedEmbedCase("test_vit", 16, workers) for workers in (1, 2)],
)
TIERS: dict[str, Tier] = {
    "smoke": SMOKE,
    # The pull-request gate's tier (`embedsearch ab`): smoke without the Ray benchmarks. Ray Data
    # embedding's rounds of 16 images take 4-6 s, mostly Ray Data's start-up; the sharded searches
    # took 28 s of a 235 s A/A gate run (a Ray cluster per worker and pass) and moved by up to 14%
    # between pairs of workers, more than the slowdowns the gate must catch (README: "The CI gate").
    "pr": replace(SMOKE, distributed_embed=[], distributed_search=[]),
    "default": Tier(
        embed=[EmbedCase("vit_small_patch16_224.dino", 8), EmbedCase("vit_small_patch16_224.dino", 32),
               EmbedCase("vit_small_patch16_224.dino", 32, "bf16")],
        build=build_grid([(20_000, 384)]) + [IndexCase("Flat", 100_000, 384), IndexCase("TorchFlat", 100_000, 384)],
        # Approximate sweeps at k = 10 only: at k = 1 and 100 their queries/s repeated k = 10's (README "Default tier")
        search=search_grid([(20_000, 384)], [1, 10, 100], nq=1000, sweep_ks=[10])
        + search_grid([(20_000, 384)], [10], 1000, "hard")
        + [SearchCase(IndexCase("Flat", n, d), 10, 1000) for n, d in ((20_000, 128), (20_000, 768))],
        # N = 100k: brute force times Flat there (the same case: not timed twice), beside TorchFlat and bf16
        brute_force=[SearchCase(IndexCase(spec, 100_000, 384), 10, 1000) for spec in BRUTE_FORCE_SPECS],
        knn=knn_grid((20_000, 2_000, 384, 200), [1, 10, 20, 100]),
        leave_one_out=[KnnCase(20_000, 0, 384, 200, 20, "weighted", spec=spec) for spec in ("Flat", BF16_SPEC)],
        end_to_end=[dict(model="efficientnet_lite0", image_size=64, k=10, rounds=1)],
        scaling=scaling_grid([12_500, 25_000, 50_000, 100_000], 128, nq=1000, nlist=256, nprobe=16),
        distributed_search=distributed_grid(100_000, 384, nq=1000, workers=[1, 2]),
        # 32 images: a batch of 16 for each of 2 workers; a round is mostly Ray Data's start-up (README)
        distributed_embed=[DistributedEmbedCase("vit_small_patch16_224.dino", 32, workers) for workers in (1, 2)],
        # half a second of rounds per fast benchmark: its median moves far less within a run than
        # between runs (README "Default tier, measured here")
        max_time_s=0.5,
    ),
    "full": Tier(
        embed=[EmbedCase(model, batch, precision)
               for model in ("vit_small_patch16_224.dino", "vit_base_patch16_224.dino", "resnet50")
               for batch in (32, 128) for precision in ("fp32", "bf16", "fp16")],
        build=build_grid([(100_000, 384), (1_281_167, 384)]),
        search=search_grid([(100_000, d) for d in (384, 768, 1024, 2048)] + [(1_281_167, 384)],
                           [1, 10, 20, 100], nq=10_000),
        brute_force=[SearchCase(IndexCase(spec, n, 384), 20, 10_000)
                     for n in (100_000, 1_281_167) for spec in BRUTE_FORCE_SPECS],
        knn=knn_grid((100_000, 10_000, 384, 200), [1, 10, 20, 100]),
        leave_one_out=[KnnCase(100_000, 0, 384, 200, 20, "weighted", spec=spec) for spec in ("Flat", BF16_SPEC)],
        end_to_end=[dict(model="efficientnet_lite0", image_size=None, k=20, rounds=3)],
        scaling=scaling_grid([160_000, 320_000, 640_000, 1_281_167], 384, nq=10_000, nlist=4096, nprobe=64),
        distributed_search=distributed_grid(1_281_167, 384, nq=10_000, workers=[1, 2, 4, 8]),
        distributed_embed=[DistributedEmbedCase("vit_small_patch16_224.dino", 512, workers, 64)
                           for workers in (1, 2, 4, 8)],
    ),
}


FILE_MAX_N = {"smoke": 10_000, "pr": 10_000, "default": 1_000_000, "full": None}  # database rows a --perf-data file may use
FILE_SCALING_MIN_N = 1_000


def file_specs(n: int, d: int) -> dict[str, tuple[str, list[int]]]:
    """approximate_specs(n, d), less IVF when n < 39 vectors per list (FAISS's advice) and PQ{d/8} when 8 does not divide d."""
    specs = {}
    for spec, sweep in approximate_specs(n, d).items():
        nlist = int(spec[3:spec.index(",")]) if spec.startswith("IVF") else 0
        if n >= 39 * nlist and ("PQ" not in spec or d % 8 == 0):
            specs[spec] = sweep
    return specs


def file_grid(tier_name: str, label: str, n: int, d: int, nq: int, metric: str,
              n_classes: int | None) -> dict[str, list]:
    """The cases a --perf-data file adds to a tier, by this rule:

    - database: the file's first min(n, FILE_MAX_N[tier]) vectors; queries: its first
      min(nq, the tier's search nq) queries;
    - search and build: Flat, TorchFlat and the tier's approximate specs sized for that n
      (`file_specs`): exact search at each of the tier's search k up to n, each approximate sweep
      at each k the tier sweeps at, up to n;
    - brute force: Flat and TorchFlat, k=10;
    - scaling: Flat and TorchFlat at n/8, n/4, n/2, n, when n/8 >= FILE_SCALING_MIN_N;
    - kNN: the tier's vote x k cases, only for files with labels (embedsearch run --embeddings).
    """
    tier = TIERS[tier_name]
    cap = FILE_MAX_N[tier_name]
    n = n if cap is None else min(n, cap)
    nq = min(nq, tier.search[0].nq)
    ks = sorted({case.k for case in tier.search if case.k <= n})
    sweep_ks = sorted({case.k for case in tier.search if case.params and case.k <= n})
    grid = {
        "search": search_grid([(n, d)], ks, nq, label, metric, file_specs, sweep_ks),
        "build": build_grid([(n, d)], label, metric, file_specs),
        "brute_force": [SearchCase(IndexCase(spec, n, d, metric, label), min(10, n), nq) for spec in ("Flat", "TorchFlat")],
        "scaling": scaling_grid([n // 8, n // 4, n // 2, n], d, nq, None, data=label, metric=metric)
        if n // 8 >= FILE_SCALING_MIN_N else [],
        "knn": [],
    }
    if n_classes is not None:
        grid["knn"] = [KnnCase(n, nq, d, n_classes, case.k, case.vote, label) for case in tier.knn if case.k <= n]
    return grid
