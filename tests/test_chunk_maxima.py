"""The Triton chunk-maxima kernel: both ways, equal to torch's `_chunk_maxima` exactly.

On cuda the kernel itself runs. On the CPU, Triton's interpreter runs the same kernel code in a
subprocess (TRITON_INTERPRET must be set before the kernel is defined); the interpreter cannot
load bf16, so there the scores are float32 tensors that hold bf16 values.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from embedsearch.chunk_maxima import chunk_maxima_both_ways, maxima_kernel_available
from embedsearch.index import _chunk_maxima

CHUNK = 64
# rows, columns: whole programs, partial chunks both ways, fewer rows than a chunk, negative scores
SHAPES = [(128, 1024), (300, 517), (40, 200), (64, 64)]
INTERPRETED_SHAPES = [(130, 517), (40, 70)]  # the interpreter is slow: partial chunks both ways, small


def scores_of(rows: int, columns: int, device: str) -> torch.Tensor:
    generator = torch.Generator(device).manual_seed(rows * columns)
    return (torch.randn((rows, columns), device=device, generator=generator) - 1.0).bfloat16()


def check(scores: torch.Tensor, row_maxima: torch.Tensor, column_maxima: torch.Tensor) -> None:
    assert torch.equal(row_maxima, _chunk_maxima(scores, CHUNK))
    assert torch.equal(column_maxima, _chunk_maxima(scores.T, CHUNK))


@pytest.mark.skipif(not maxima_kernel_available(torch.device("cuda")) or not torch.cuda.is_available(),
                    reason="no CUDA device with Triton")
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_on_cuda_equals_torch(shape):
    scores = scores_of(*shape, "cuda")
    check(scores, *chunk_maxima_both_ways(scores, CHUNK, True))
    row_maxima, column_maxima = chunk_maxima_both_ways(scores, CHUNK, False)
    assert column_maxima is None and torch.equal(row_maxima, _chunk_maxima(scores, CHUNK))
    # a view of the first columns of a wider block, as the last partial block of all pairs is
    wide = scores_of(shape[0], shape[1] + 40, "cuda")[:, :shape[1]]
    check(wide, *chunk_maxima_both_ways(wide, CHUNK, True))


INTERPRETED = """
import json, sys
import torch
from embedsearch.chunk_maxima import chunk_maxima_both_ways
results = []
for rows, columns in json.loads(sys.argv[1]):
    generator = torch.Generator().manual_seed(rows * columns)
    wide = (torch.randn((rows, columns + 40), generator=generator) - 1.0).bfloat16().float()
    for scores in (wide[:, 40:].contiguous(), wide[:, :columns]):  # rows laid out wider, as in all pairs
        results.append((scores, *chunk_maxima_both_ways(scores, 64, True), chunk_maxima_both_ways(scores, 64, False)))
torch.save(results, sys.argv[2])
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_kernel_in_the_triton_interpreter_equals_torch(tmp_path):
    saved = tmp_path / "results.pt"
    subprocess.run([sys.executable, "-c", INTERPRETED, json.dumps(INTERPRETED_SHAPES), str(saved)], check=True,
                   env={**os.environ, "TRITON_INTERPRET": "1"})
    for scores, row_maxima, column_maxima, one_way in torch.load(saved):
        check(scores, row_maxima, column_maxima)
        assert torch.equal(one_way[0], row_maxima) and one_way[1] is None


@pytest.mark.parametrize("chunk, message", [(48, "chunk 48: expected a power of 2"),
                                            (0, "chunk 0: expected a power of 2")])
def test_bad_chunk(chunk, message):
    with pytest.raises(ValueError, match=message):
        chunk_maxima_both_ways(torch.zeros((4, 4)), chunk, False)


def test_strided_rows_are_refused():
    with pytest.raises(ValueError, match="expected contiguous rows"):
        chunk_maxima_both_ways(torch.zeros((4, 4)).T, 2, False)
