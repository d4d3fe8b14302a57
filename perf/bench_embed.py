"""Embedding throughput: model x batch size x device x precision, in images/s."""

import numpy as np
import pytest
import torch

from embedsearch.data import DigitsImages
from embedsearch.device import synchronize
from embedsearch.embed import cpu_supports_bf16, embed_dataset, embed_images, load_model
from embedsearch.fields import IMAGES_PER_S, KNN_TOP1_CHANGE, KNN_TOP1_FP32, MEAN_COSINE_TO_FP32
from embedsearch.index import build_index
from embedsearch.knn import class_scores, leave_one_out_search, similarities, topk_accuracy
from embedsearch.memory import vit_embedding_model_bytes
from memory_pass import memory_pass
from records import median_seconds, record
from timed_call import time_operation

DIGITS_FOR_TOP1 = 150  # digits images embedded in both precisions to compare kNN top-1 (15 a class)

_models: dict[tuple[str, str], object] = {}


def test_embed_throughput(benchmark, embed_case, device, threads, pytestconfig):
    if embed_case.precision == "fp16" and device != "cuda":
        pytest.skip("precision fp16 autocasts on cuda only")
    if embed_case.precision == "bf16" and device == "cpu" and not cpu_supports_bf16():
        pytest.skip("precision bf16 on cpu needs AVX512-BF16 or AMX")
    from timm.models.vision_transformer import VisionTransformer  # here, not at collection (embed.load_model)

    key = (embed_case.model, device)
    if key not in _models:
        _models.clear()  # one model resident at a time
        _models[key] = load_model(embed_case.model, weights="random", device=device)
    model = _models[key]
    images = torch.randn(embed_case.batch_size, *model.data_config["input_size"], generator=torch.Generator().manual_seed(0))
    images = images.to(model.device)

    def embed_batch():
        embeddings = embed_images(model, images, embed_case.precision)
        synchronize(model.device)
        return embeddings

    benchmark.group = f"embed {embed_case.model} {device}"
    embeddings = time_operation(benchmark, pytestconfig, embed_batch)
    assert embeddings.shape == (embed_case.batch_size, model.embedding_dim)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(1, device=model.device), atol=1e-3)
    modelled = device == "cpu" and embed_case.precision == "fp32" and isinstance(model.model, VisionTransformer)
    memory_pass(benchmark, pytestconfig, embed_batch, device,
                model_bytes=vit_embedding_model_bytes(model, embed_case.batch_size) if modelled else None)
    seconds = median_seconds(benchmark)
    figures = compare_to_fp32(model, embeddings, images, embed_case.precision) if embed_case.precision != "fp32" else {}
    record(benchmark, threads, **figures, model=embed_case.model, batch_size=embed_case.batch_size,
           precision=embed_case.precision, device=device, input_size=list(model.data_config["input_size"]),
           embedding_dim=model.embedding_dim, weights="random",
           **({IMAGES_PER_S: embed_case.batch_size / seconds} if seconds else {}))


def compare_to_fp32(model, embeddings: torch.Tensor, images: torch.Tensor, precision: str) -> dict:
    """Mean cosine of these embeddings to fp32 ones of the same batch, and the change of kNN top-1 on digits.

    Top-1: leave-one-out kNN (k=10, majority) over DIGITS_FOR_TOP1 digits images embedded in each
    precision; the figure is top-1 in `precision` minus top-1 in fp32 (random weights: only the
    difference means something).
    """
    fp32 = embed_images(model, images)
    cosine = float((embeddings.float() * fp32).sum(dim=1).mean())
    digits = DigitsImages(np.arange(DIGITS_FOR_TOP1), transform=model.transform())
    labels = digits.targets[digits.indices]
    top1 = {}
    for name in ("fp32", precision):
        vectors = embed_dataset(model, digits, batch_size=50, precision=name, progress=False)
        distances, ids = leave_one_out_search(build_index("Flat", vectors, "ip"), vectors, 10)
        scores = class_scores(ids, similarities(distances, "ip"), labels, 10)
        top1[name] = topk_accuracy(scores, labels)[1]
    return {MEAN_COSINE_TO_FP32: cosine, KNN_TOP1_CHANGE: top1[precision] - top1["fp32"],
            KNN_TOP1_FP32: top1["fp32"]}
