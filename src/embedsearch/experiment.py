"""The study's pipeline end to end: embed, build, leave-one-out train search, val search, kNN classify."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
import torch
from torch.utils.data import Dataset

from . import __version__
from .data import DigitsImages, EmbeddingSplit, clustered_embeddings, digits_arrays, image_folder, is_tiny_imagenet, tiny_imagenet
from .device import resolve_device
from .embed import PRECISIONS, embed_dataset, load_model, timm_version
from .files import check_writable, save_npz_atomically
from .index import build_index
from .knn import DEFAULT_TEMPERATURE, VOTES, class_scores, leave_one_out_search, similarities, topk_accuracy
from .memory import StageMeasure, measure_stage
from .validation import as_labels, as_vectors, check_choice, check_positive_number

PIXELS_MODEL = "pixels"  # no network: an image's raw pixels, flattened, are its embedding
DIGITS_TRAIN = 1297  # digits split: the first 1297 images train, the last 500 validate
ENGINES = ("local", "ray")  # local: one in-process index; ray: the index sharded over Ray actors

@dataclass
class ExperimentConfig:
    """What to run: data set, model and weights, device, index, k values and vote."""

    dataset: str = "digits"  # "digits", "synthetic", an ImageFolder root (train/, val/) or a Tiny ImageNet root
    model: str = PIXELS_MODEL
    weights: str = "random"
    device: str = "auto"
    index: str = "Flat"
    ks: tuple[int, ...] = (10, 20)
    vote: str = "weighted"
    temperature: float = DEFAULT_TEMPERATURE
    batch_size: int = 64
    workers: int = 0
    precision: str = "fp32"
    image_size: int | None = None  # square input side in pixels; None: the model's own (224 for most)
    embeddings: str | None = None  # .npz file: loaded when present, else written after embedding
    n_train: int = 100_000  # synthetic data shape (the study's Tiny ImageNet: 100k / 10k, 200 classes, 384-d)
    n_val: int = 10_000
    d: int = 384
    classes: int = 200
    engine: str = "local"
    shards: int = 2  # engine "ray": shard actors (one cpu thread or one GPU each)
    ray_address: str | None = None  # engine "ray": None (local cluster), "auto", "host:port" or "ray://host:port"


@dataclass
class ExperimentResult:
    """Every parameter, version and figure of one run: the study's table row and its k sweep."""

    config: dict
    n_train: int
    n_val: int
    d: int
    n_classes: int
    device: str
    weights: str
    embeddings_loaded: bool
    stages: dict[str, dict] = field(default_factory=dict)
    accuracy: list[dict] = field(default_factory=list)  # one row per k: train/val top-1/top-5
    versions: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def run_experiment(config: ExperimentConfig) -> ExperimentResult:
    """Run the study's pipeline for `config` and return its result record."""
    check_choice(config.vote, "vote", VOTES)
    check_choice(config.engine, "engine", ENGINES)
    if not config.ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in config.ks):
        raise ValueError(f"ks={config.ks!r}: expected one or more positive integers")
    _check_options(config)
    if config.image_size is not None and (isinstance(config.image_size, bool) or not isinstance(config.image_size, int)
                                          or config.image_size < 16):
        raise ValueError(f"image_size={config.image_size!r}: expected an integer >= 16 (pixels) or None")
    device = resolve_device(config.device)
    stages: dict[str, StageMeasure] = {}
    loaded = config.embeddings is not None and _embeddings_exist(config.embeddings)
    key = _embeddings_key(config) if config.embeddings is not None else None
    embedded, weights = _load_embeddings(config.embeddings, key) if loaded else _embed(config, device, stages)
    if config.embeddings is not None and not loaded:
        _save_embeddings(config.embeddings, embedded, weights, key)
    k_max = max(config.ks)
    if k_max > len(embedded.train_vectors) - 1:
        raise ValueError(f"ks={config.ks}: expected k <= {len(embedded.train_vectors) - 1} (train size - 1)")
    index_device = "cpu" if device.type == "cpu" else str(device)
    with measure_stage(device) as stages["build"]:
        if config.engine == "ray":
            from .distributed import build_sharded_index  # Ray is imported there only

            index = build_sharded_index(config.index, embedded.train_vectors, "ip", config.shards,
                                        config.ray_address, device="cpu" if device.type == "cpu" else "cuda")
        else:
            index = build_index(config.index, embedded.train_vectors, "ip", index_device)
    with measure_stage(device) as stages["search_train"]:
        train_distances, train_ids = leave_one_out_search(index, embedded.train_vectors, k_max)
    with measure_stage(device) as stages["search_val"]:
        val_distances, val_ids = index.search(embedded.val_vectors, k_max)
    accuracy = []
    with measure_stage(device) as stages["classify"]:
        for k in sorted(config.ks):
            row = {"k": k, "vote": config.vote}
            for split, distances, ids, labels in (("train", train_distances, train_ids, embedded.train_labels),
                                                  ("val", val_distances, val_ids, embedded.val_labels)):
                scores = class_scores(ids[:, :k], similarities(distances[:, :k], "ip"), embedded.train_labels,
                                      embedded.n_classes, config.vote, config.temperature)
                top = topk_accuracy(scores, labels)
                row[f"{split}_top1"], row[f"{split}_top5"] = top[1], top[5]
            accuracy.append(row)
    return ExperimentResult(
        config=asdict(config), n_train=len(embedded.train_vectors), n_val=len(embedded.val_vectors),
        d=embedded.train_vectors.shape[1], n_classes=embedded.n_classes, device=str(device),
        weights=weights, embeddings_loaded=loaded,
        stages={name: asdict(measure) for name, measure in stages.items()}, accuracy=accuracy,
        versions={"embedsearch": __version__, "faiss": faiss.__version__, "torch": torch.__version__,
                  "timm": timm_version(), "numpy": np.__version__, "python": platform.python_version()},
    )


# Options that only some data sets or models use: giving one elsewhere is refused, not ignored.
_EMBEDDING_OPTIONS = ("weights", "precision", "batch_size", "workers")
_SYNTHETIC_OPTIONS = ("n_train", "n_val", "d", "classes")


def _check_options(config: ExperimentConfig) -> None:
    """Refuse invalid values, a missing data set or weights file, and options this data set and model do not use."""
    for name, low in (("batch_size", 1), ("workers", 0)):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r}: expected an integer >= {low}")
    check_choice(config.precision, "precision", PRECISIONS)
    if config.vote == "weighted":
        check_positive_number(config.temperature, "temperature")
    if config.dataset not in ("digits", "synthetic") and not Path(config.dataset).is_dir():
        raise FileNotFoundError(
            f"dataset={config.dataset!r}: no such folder; expected 'digits', 'synthetic', a Tiny ImageNet "
            "folder, or a folder with train/<class>/ and val/<class>/ image trees"
        )
    if config.weights not in ("pretrained", "random") and not Path(config.weights).is_file():
        raise FileNotFoundError(f"weights={config.weights!r}: expected 'pretrained', 'random' or an existing checkpoint file")
    unused_groups = []  # (option names, why they do not apply)
    if config.dataset == "synthetic":
        unused_groups.append((("model", *_EMBEDDING_OPTIONS), "dataset='synthetic' is generated, without a model"))
    elif config.model == PIXELS_MODEL:
        unused_groups.append((_EMBEDDING_OPTIONS, f"model={PIXELS_MODEL!r} embeds raw pixels, without a network"))
    if config.dataset != "synthetic":
        unused_groups.append((_SYNTHETIC_OPTIONS, "they shape dataset='synthetic' only"))
    defaults = ExperimentConfig()
    for names, reason in unused_groups:
        given = [f"{name}={getattr(config, name)!r}" for name in names if getattr(config, name) != getattr(defaults, name)]
        if given:
            raise ValueError(f"{', '.join(given)}: not used here ({reason}); leave {'them' if len(given) > 1 else 'it'} out")


def _embed(config: ExperimentConfig, device: torch.device,
           stages: dict[str, StageMeasure]) -> tuple[EmbeddingSplit, str]:
    """Train and val embedded (or generated), and the weights that made them; image embedding is timed into `stages`."""
    if config.dataset == "synthetic":
        return clustered_embeddings(config.n_train, config.n_val, config.d, config.classes), "synthetic"
    if config.model == PIXELS_MODEL:
        if config.dataset != "digits":
            raise ValueError(f"model={PIXELS_MODEL!r} works on dataset='digits' only, got {config.dataset!r}")
        with measure_stage(device) as stages["embed_train"]:
            pixels, labels = digits_arrays()
            vectors = pixels / np.linalg.norm(pixels, axis=1, keepdims=True)
        return EmbeddingSplit(np.ascontiguousarray(vectors[:DIGITS_TRAIN]), labels[:DIGITS_TRAIN],
                              np.ascontiguousarray(vectors[DIGITS_TRAIN:]), labels[DIGITS_TRAIN:], 10), "none (pixels)"
    model = load_model(config.model, config.weights, str(device))
    if config.image_size is not None:
        model.data_config = {**model.data_config, "input_size": (3, config.image_size, config.image_size)}
    train_set, val_set, n_classes = _image_datasets(config.dataset, model.transform())
    embedded = []
    for name, dataset in (("embed_train", train_set), ("embed_val", val_set)):
        with measure_stage(device) as stages[name]:
            vectors = embed_dataset(model, dataset, config.batch_size, config.workers, config.precision)
        embedded += [vectors, np.asarray(_targets(dataset), dtype=np.int64)]
    return EmbeddingSplit(*embedded, n_classes), model.weights


def _image_datasets(dataset: str, transform) -> tuple[Dataset, Dataset, int]:
    if dataset == "digits":
        indices = np.arange(len(digits_arrays()[1]))
        return (DigitsImages(indices[:DIGITS_TRAIN], transform), DigitsImages(indices[DIGITS_TRAIN:], transform), 10)
    root = Path(dataset)
    if is_tiny_imagenet(root):
        train, val = tiny_imagenet(root, transform)
        return train, val, len(train.classes)
    if (root / "train").is_dir() and (root / "val").is_dir():
        train, val = image_folder(root / "train", transform), image_folder(root / "val", transform)
        if val.classes != train.classes:
            raise ValueError(f"{str(root)!r}: val/ classes differ from train/ classes")
        return train, val, len(train.classes)
    raise ValueError(
        f"dataset={dataset!r}: expected 'digits', 'synthetic', a Tiny ImageNet folder, or a folder "
        "with train/<class>/ and val/<class>/ image trees"
    )


def _targets(dataset: Dataset) -> list[int]:
    return [int(dataset.targets[i]) for i in range(len(dataset))]


EMBEDDING_ARRAYS = ("train_vectors", "train_labels", "val_vectors", "val_labels", "n_classes", "weights", "key")


def _embeddings_exist(path: str) -> bool:
    """True when `path` holds saved embeddings to load; raises when it is a folder or cannot be written."""
    if Path(path).is_file():
        return True
    check_writable(path, "embeddings")
    return False


def _embeddings_key(config: ExperimentConfig) -> dict:
    """Everything that produced the embeddings: data set (parameters, or its images' names, sizes and labels),
    model, weights (a file's content hash) and precision."""
    key: dict = {"dataset": config.dataset, "model": config.model, "weights": str(config.weights),
                 "precision": config.precision}
    if config.dataset == "synthetic":
        key.update((name, getattr(config, name)) for name in _SYNTHETIC_OPTIONS)
    elif config.dataset != "digits":
        key["files"] = _images_fingerprint(config.dataset)
    if config.weights not in ("pretrained", "random"):
        key["weights_sha256"] = _file_sha256(Path(config.weights))
    if config.image_size is not None:
        key["image_size"] = config.image_size
    return key


def _images_fingerprint(dataset: str) -> str:
    """sha256 of every train and val image's path (relative to the data set's root), size in bytes and label."""
    train, val, _ = _image_datasets(dataset, None)
    entries = [f"{split}\t{Path(path).relative_to(dataset).as_posix()}\t{os.stat(path).st_size}\t{label}"
               for split, images in (("train", train), ("val", val)) for path, label in images.samples]
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _save_embeddings(path: str, embedded: EmbeddingSplit, weights: str, key: dict) -> None:
    save_npz_atomically(path, {
        "train_vectors": embedded.train_vectors, "train_labels": embedded.train_labels,
        "val_vectors": embedded.val_vectors, "val_labels": embedded.val_labels, "n_classes": embedded.n_classes,
        "weights": weights, "key": json.dumps(key, sort_keys=True)})


def _load_embeddings(path: str, key: dict) -> tuple[EmbeddingSplit, str]:
    """The embeddings saved in `path` and their weights, refused unless they were made with the same `key`."""
    expected = f"the .npz archive `embedsearch run --embeddings` writes, with arrays {', '.join(EMBEDDING_ARRAYS)}"
    try:
        stored = np.load(path, allow_pickle=False)
        if isinstance(stored, np.ndarray):
            raise ValueError(f"it holds a single array of shape {stored.shape} (a .npy file)")
        with stored:
            arrays = {name: stored[name] for name in EMBEDDING_ARRAYS if name in stored.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"embeddings={path!r} could not be read ({error}): expected {expected}; "
                         "delete it to embed again") from None
    missing = [name for name in EMBEDDING_ARRAYS if name not in arrays]
    if missing:
        raise ValueError(f"embeddings={path!r} lacks {', '.join(missing)}: expected {expected}")
    try:
        stored_key = json.loads(str(arrays["key"]))
    except json.JSONDecodeError:
        stored_key = str(arrays["key"])
    if stored_key != json.loads(json.dumps(key)):
        differ = (sorted(name for name in set(stored_key) | set(key) if stored_key.get(name) != key.get(name))
                  if isinstance(stored_key, dict) else ["key"])
        raise ValueError(
            f"embeddings={path!r} were made for {stored_key}, not {key} (they differ in {', '.join(differ)}); "
            "pass another --embeddings file, or delete this one to embed again"
        )
    train_vectors = as_vectors(arrays["train_vectors"], f"train_vectors in {path}")
    val_vectors = as_vectors(arrays["val_vectors"], f"val_vectors in {path}")
    train_labels = as_labels(arrays["train_labels"], f"train_labels in {path}", len(train_vectors))
    val_labels = as_labels(arrays["val_labels"], f"val_labels in {path}", len(val_vectors))
    return (EmbeddingSplit(train_vectors, train_labels, val_vectors, val_labels, int(arrays["n_classes"])),
            str(arrays["weights"]))
