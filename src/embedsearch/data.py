"""Data sources: synthetic clustered embeddings, ImageFolder trees (Tiny ImageNet too), digits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from torchvision.datasets import ImageFolder


@dataclass(frozen=True)
class EmbeddingSplit:
    """Train and val embeddings (float32, C-contiguous, one row per item) with int64 labels."""

    train_vectors: np.ndarray
    train_labels: np.ndarray
    val_vectors: np.ndarray
    val_labels: np.ndarray
    n_classes: int


def clustered_embeddings(
    n_train: int,
    n_val: int,
    d: int,
    n_classes: int,
    separation: float = 0.27,
    seed: int = 0,
    normalize: bool = True,
) -> EmbeddingSplit:
    """Return a class-conditional Gaussian mixture split, deterministic in `seed`.

    Each class has a random unit-norm centre; a point is `separation * centre + noise`, the noise
    an isotropic Gaussian of expected norm 1, so `separation` is the ratio of centre norm to
    within-class spread (0.27: weighted-kNN top-1 about 0.8 at 100k x 384 and 200 classes). Rows
    are L2-normalised when `normalize` (as DINO features are used).
    """
    for name, value, low in (("n_train", n_train, 1), ("n_val", n_val, 0), ("d", d, 1),
                             ("n_classes", n_classes, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name}={value!r}: expected an integer >= {low}")
    if n_classes > n_train:
        raise ValueError(f"n_classes={n_classes} exceeds n_train={n_train}: every class needs a point")
    if isinstance(separation, bool) or not isinstance(separation, (int, float, np.integer, np.floating)):
        raise TypeError(f"separation={separation!r}: expected a finite number >= 0")
    if not np.isfinite(separation) or separation < 0:
        raise ValueError(f"separation={separation!r}: expected a finite number >= 0")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected an integer >= 0")
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.arange(n, dtype=np.int64) % n_classes)
        vectors = rng.standard_normal((n, d), dtype=np.float32)
        vectors *= np.float32(1.0 / np.sqrt(d))
        vectors += np.float32(separation) * centres[labels]
        if normalize:
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors, labels

    train_vectors, train_labels = draw(n_train)
    val_vectors, val_labels = draw(n_val)
    return EmbeddingSplit(train_vectors, train_labels, val_vectors, val_labels, n_classes)


def load_rgb_image(path: str | Path) -> Image.Image:
    """Return the image at `path` as RGB, or raise ValueError naming the file when it cannot be decoded."""
    try:
        with open(path, "rb") as file:
            return Image.open(file).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        # PIL reports truncated or corrupt files as OSError (or SyntaxError) without the path
        raise ValueError(f"image {str(path)!r} could not be read: {type(error).__name__}: {error}") from None


def image_folder(root: str | Path, transform: Callable | None = None) -> ImageFolder:
    """Return a torchvision ImageFolder over `root`/<class>/.../<image>, with a clear error if absent."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist or is not a directory")
    from torchvision.datasets import ImageFolder  # here: importing torchvision takes about 2 s (torch._dynamo)

    return ImageFolder(str(root), transform=transform, loader=load_rgb_image)


def is_tiny_imagenet(root: str | Path) -> bool:
    """True when `root` has Tiny ImageNet's published layout (train/<wnid>/images, val/images + annotations)."""
    root = Path(root)
    return (root / "train").is_dir() and (root / "val" / "val_annotations.txt").is_file()


class TinyImageNetVal(Dataset):
    """Tiny ImageNet's val split: val/images/*.JPEG labelled by val/val_annotations.txt."""

    def __init__(self, root: str | Path, class_to_idx: dict[str, int], transform: Callable | None = None):
        root = Path(root)
        annotations = root / "val" / "val_annotations.txt"
        if not annotations.is_file():
            raise FileNotFoundError(f"{str(annotations)!r} not found: not a Tiny ImageNet folder")
        self.transform = transform
        self.samples: list[tuple[Path, int]] = []
        try:
            text = annotations.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"{str(annotations)!r} is not UTF-8 text ({error.reason} at byte {error.start}): "
                             "expected '<file>\\t<wnid>\\t...' lines") from None
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in class_to_idx:
                raise ValueError(
                    f"{annotations}:{line_number}: expected '<file>\\t<wnid>\\t...' with a wnid "
                    f"from train/, got {line!r}"
                )
            self.samples.append((root / "val" / "images" / fields[0], class_to_idx[fields[1]]))
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = load_rgb_image(path)
        return (self.transform(image) if self.transform else image), label


def tiny_imagenet(root: str | Path, transform: Callable | None = None) -> tuple[ImageFolder, TinyImageNetVal]:
    """Return (train, val) data sets of a Tiny ImageNet folder, val labelled with train's class indices."""
    if not is_tiny_imagenet(root):
        raise FileNotFoundError(
            f"{str(root)!r} is not a Tiny ImageNet folder: expected train/<wnid>/images/ and "
            "val/images/ with val/val_annotations.txt"
        )
    train = image_folder(Path(root) / "train", transform)
    return train, TinyImageNetVal(root, train.class_to_idx, transform)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Return scikit-learn's bundled 8x8 digits as (float32 pixels of shape (1797, 64), int64 labels)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.ascontiguousarray(digits.data, dtype=np.float32), digits.target.astype(np.int64)


class DigitsImages(Dataset):
    """scikit-learn's digits as RGB PIL images (0-16 intensities scaled to 0-255) for image models."""

    def __init__(self, indices: np.ndarray | None = None, transform: Callable | None = None):
        pixels, labels = digits_arrays()
        self.indices = np.arange(len(labels)) if indices is None else np.asarray(indices)
        self.images = (pixels.reshape(-1, 8, 8) * (255.0 / 16.0)).round().astype(np.uint8)
        self.targets = labels[self.indices]  # item i's label, as ImageFolder's targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        item = int(self.indices[index])
        image = Image.fromarray(self.images[item]).convert("RGB")
        return (self.transform(image) if self.transform else image), int(self.targets[index])


SYNTHETIC_PRESETS = ("embedding", "hard")  # shaped like real embeddings (the default); the isotropic mixture


def embedding_like(n_train: int, n_val: int, d: int, n_classes: int, seed: int = 0, latent_dim: int = 48,
                   local_dim: int = 32, decay: float = 0.2, spread: float = 1.5, noise: float = 0.2) -> EmbeddingSplit:
    """Return a split shaped like real embeddings: low local intrinsic dimensionality, clear nearest neighbours.

    Real embeddings concentrate near low-dimensional structure with a decaying spectrum, so
    their LID is small and their relative contrast well above 1 (README: measured on
    EfficientNet-Lite0 features). Here class centres lie in a `latent_dim`-dimensional subspace
    with power-law scales i^-decay; each class varies along its own `local_dim` random
    directions, with the same decay and expected offset norm `spread`; isotropic noise of
    expected norm `noise` is added and rows are L2-normalised. Float32, deterministic in `seed`.
    The defaults were tuned (README) so that at 20k x 384 with 200 classes LID and relative
    contrast sit near those of EfficientNet-Lite0 features of digits.
    """
    for name, value, low in (("n_train", n_train, 1), ("n_val", n_val, 0), ("d", d, 1), ("n_classes", n_classes, 1),
                             ("latent_dim", latent_dim, 1), ("local_dim", local_dim, 1)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name}={value!r}: expected an integer >= {low}")
    if latent_dim > d:
        raise ValueError(f"latent_dim={latent_dim} exceeds d={d}")
    for name, value in (("decay", decay), ("spread", spread), ("noise", noise)):
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"{name}={value!r}: expected a finite number >= 0")
    rng = np.random.default_rng(seed)
    latent_basis = np.linalg.qr(rng.standard_normal((d, latent_dim)))[0].T.astype(np.float32)
    latent_scales = ((1.0 + np.arange(latent_dim)) ** -decay).astype(np.float32)
    centres = (rng.standard_normal((n_classes, latent_dim), dtype=np.float32) * latent_scales) @ latent_basis
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    local_scales = ((1.0 + np.arange(local_dim)) ** -decay).astype(np.float32)
    local_scales *= np.float32(spread / np.sqrt((local_scales ** 2).sum()))  # expected offset norm = spread
    local_bases = [rng.standard_normal((local_dim, d), dtype=np.float32) / np.float32(np.sqrt(d))
                   for _ in range(n_classes)]

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.arange(n, dtype=np.int64) % n_classes)
        vectors = rng.standard_normal((n, d), dtype=np.float32)
        vectors *= np.float32(noise / np.sqrt(d))
        vectors += centres[labels]
        offsets = rng.standard_normal((n, local_dim), dtype=np.float32) * local_scales
        for label in range(n_classes):  # one class at a time: no (n, local_dim, d) temporary
            members = np.flatnonzero(labels == label)
            vectors[members] += offsets[members] @ local_bases[label]
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors, labels

    train_vectors, train_labels = draw(n_train)
    val_vectors, val_labels = draw(n_val)
    return EmbeddingSplit(train_vectors, train_labels, val_vectors, val_labels, n_classes)


def synthetic_embeddings(preset: str, n_train: int, n_val: int, d: int, n_classes: int, seed: int = 0) -> EmbeddingSplit:
    """Return the split of a named preset: "embedding" (`embedding_like`) or "hard" (`clustered_embeddings`)."""
    if preset == "embedding":
        return embedding_like(n_train, n_val, d, n_classes, seed=seed)
    if preset == "hard":
        return clustered_embeddings(n_train, n_val, d, n_classes, seed=seed)
    raise ValueError(f"preset={preset!r}: expected one of {', '.join(map(repr, SYNTHETIC_PRESETS))}")
