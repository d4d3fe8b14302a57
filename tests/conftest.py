"""Shared test fixtures: small generated image trees in the layouts the data module reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((16, 16, 3), value, dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def tiny_imagenet_root(tmp_path: Path) -> Path:
    """A Tiny ImageNet-layout tree: 3 classes x 2 train images, 4 val images listed in annotations."""
    wnids = ["n01443537", "n01629819", "n01641577"]
    for class_index, wnid in enumerate(wnids):
        for image_index in range(2):
            write_image(tmp_path / "train" / wnid / "images" / f"{wnid}_{image_index}.JPEG", 40 * class_index)
    val_labels = [2, 0, 1, 2]
    lines = []
    for image_index, class_index in enumerate(val_labels):
        name = f"val_{image_index}.JPEG"
        write_image(tmp_path / "val" / "images" / name, 40 * class_index)
        lines.append(f"{name}\t{wnids[class_index]}\t0\t0\t15\t15")
    (tmp_path / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster of 2 CPUs for the whole test session (later connect() calls reuse it)."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    if started:
        ray.shutdown()
