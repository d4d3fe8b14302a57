"""The benchmark grids of each tier: which cases every stage's benchmarks run."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    """An index over the first n train vectors of a clustered data set of dimension d."""

    spec: str
    n: int
    d: int
    metric: str = "ip"

    @property
    def id(self) -> str:
        return f"{self.spec}-n{self.n}-d{self.d}-{self.metric}"


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
    spec: str = "Flat"  # the exact index searched (leave-one-out)

    @property
    def id(self) -> str:
        spec = "" if self.spec == "Flat" else f"-{self.spec}"  # Flat keeps the names of saved runs
        return f"n{self.n_train}-v{self.n_val}-d{self.d}-c{self.n_classes}-k{self.k}-{self.vote}{spec}"


@dataclass(frozen=True)
class Tier:
    embed: list[EmbedCase]
    build: list[IndexCase]
    search: list[SearchCase]
    brute_force: list[SearchCase]
    knn: list[KnnCase]
    leave_one_out: list[KnnCase]
    end_to_end: list[dict] = field(default_factory=list)  # digits through a timm model: model, k
    scaling: list[SearchCase] = field(default_factory=list)  # one search at growing n: time vs n


def approximate_specs(n: int, d: int) -> dict[str, tuple[str, list[int]]]:
    """Approximate index specs sized for n vectors of dimension d, each with its search-parameter sweep."""
    nlist = 64 if n <= 10_000 else 256 if n <= 200_000 else 4096
    return {
        f"IVF{nlist},Flat": ("nprobe", sorted({1, 4, 16, nlist // 4})),
        "HNSW32": ("efSearch", [16, 64, 256]),
        f"IVF{nlist},PQ{d // 8}x4fs": ("nprobe", sorted({4, 16, nlist // 4})),  # 4-bit fast-scan PQ: d/8 bytes
    }


def search_grid(sizes: list[tuple[int, int]], ks: list[int], nq: int) -> list[SearchCase]:
    """Exact and approximate search cases over (n, d) sizes and k, every parameter of each sweep."""
    cases = []
    for n, d in sizes:
        for k in ks:
            for spec in ("Flat", "TorchFlat"):
                cases.append(SearchCase(IndexCase(spec, n, d), k, nq))
            for spec, (param, values) in approximate_specs(n, d).items():
                cases += [SearchCase(IndexCase(spec, n, d), k, nq, ((param, value),)) for value in values]
    return cases


def build_grid(sizes: list[tuple[int, int]]) -> list[IndexCase]:
    return [IndexCase(spec, n, d) for n, d in sizes for spec in ("Flat", "TorchFlat", *approximate_specs(n, d))]


def scaling_grid(sizes: list[int], d: int, nq: int, nlist: int, nprobe: int) -> list[SearchCase]:
    """Exact and IVF search at each n, everything else fixed, to fit the exponent of time vs n."""
    specs = (("Flat", ()), ("TorchFlat", ()), (f"IVF{nlist},Flat", (("nprobe", nprobe),)))
    return [SearchCase(IndexCase(spec, n, d), 10, nq, params) for spec, params in specs for n in sizes]


def knn_grid(shape: tuple[int, int, int, int], ks: list[int]) -> list[KnnCase]:
    return [KnnCase(*shape, k, vote) for k in ks for vote in ("majority", "weighted")]


TIERS: dict[str, Tier] = {
    "smoke": Tier(
        embed=[EmbedCase("test_vit", 8), EmbedCase("test_vit", 8, "bf16")],
        build=build_grid([(5_000, 64)]),
        search=search_grid([(5_000, 64)], [10], nq=200),
        brute_force=[SearchCase(IndexCase(spec, 5_000, 64), 10, 200) for spec in BRUTE_FORCE_SPECS],
        knn=knn_grid((5_000, 500, 64, 20), [10]),
        leave_one_out=[KnnCase(5_000, 0, 64, 20, 10, "weighted", spec) for spec in ("Flat", BF16_SPEC)],
        end_to_end=[dict(model="test_vit", k=10)],
        scaling=scaling_grid([2_500, 5_000, 10_000, 20_000], 64, nq=200, nlist=64, nprobe=8),
    ),
    "default": Tier(
        embed=[EmbedCase("vit_small_patch16_224.dino", 8), EmbedCase("vit_small_patch16_224.dino", 32),
               EmbedCase("vit_small_patch16_224.dino", 32, "bf16")],
        build=build_grid([(20_000, 384)]) + [IndexCase("Flat", 100_000, 384), IndexCase("TorchFlat", 100_000, 384)],
        search=search_grid([(20_000, 384)], [1, 10, 100], nq=1000)
        + [SearchCase(IndexCase("Flat", n, d), 10, 1000) for n, d in ((20_000, 128), (20_000, 768), (100_000, 384))],
        brute_force=[SearchCase(IndexCase(spec, 100_000, 384), 10, 1000) for spec in BRUTE_FORCE_SPECS],
        knn=knn_grid((20_000, 2_000, 384, 200), [1, 10, 20, 100]),
        leave_one_out=[KnnCase(20_000, 0, 384, 200, 20, "weighted", spec) for spec in ("Flat", BF16_SPEC)],
        end_to_end=[dict(model="test_vit", k=10)],
        scaling=scaling_grid([12_500, 25_000, 50_000, 100_000], 128, nq=1000, nlist=256, nprobe=16),
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
        leave_one_out=[KnnCase(100_000, 0, 384, 200, 20, "weighted", spec) for spec in ("Flat", BF16_SPEC)],
        end_to_end=[dict(model="vit_small_patch16_224.dino", k=20)],
        scaling=scaling_grid([160_000, 320_000, 640_000, 1_281_167], 384, nq=10_000, nlist=4096, nprobe=64),
    ),
}
