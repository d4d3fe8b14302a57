"""Embedding throughput: model x batch size x device x precision, in images/s."""

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from embedsearch.device import synchronize
from embedsearch.embed import embed_images, load_model
from embedsearch.memory import vit_embedding_model_bytes
from harness import median_seconds, memory_pass, record

_models: dict[tuple[str, str], object] = {}


def test_embed_throughput(benchmark, embed_case, device, threads, pytestconfig):
    if embed_case.precision != "fp32" and device != "cuda":
        pytest.skip(f"precision {embed_case.precision} autocasts on cuda only")
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
    embed_batch()  # warm-up: thread pools, allocator, oneDNN kernels
    embeddings = benchmark(embed_batch)
    assert embeddings.shape == (embed_case.batch_size, model.embedding_dim)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(1, device=model.device), atol=1e-3)
    modelled = device == "cpu" and embed_case.precision == "fp32" and isinstance(model.model, VisionTransformer)
    memory_pass(benchmark, pytestconfig, embed_batch, device,
                model_bytes=vit_embedding_model_bytes(model, embed_case.batch_size) if modelled else None)
    seconds = median_seconds(benchmark)
    record(benchmark, threads, model=embed_case.model, batch_size=embed_case.batch_size,
           precision=embed_case.precision, device=device, input_size=list(model.data_config["input_size"]),
           embedding_dim=model.embedding_dim, weights="random",
           **({"images_per_s": embed_case.batch_size / seconds} if seconds else {}))
