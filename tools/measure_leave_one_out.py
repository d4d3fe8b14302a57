"""Leave-one-out kNN search at the Tiny ImageNet shape (100k x 384, k=20), Flat vs TorchFlat.bf16, interleaved.

    python tools/measure_leave_one_out.py

Two rounds of each backend in turn on the `embedding` synthetic preset (ip, 2 threads); prints
each build and search time and the share of ids equal to Flat's.
"""
import time

import faiss
import torch

from embedsearch.data import synthetic_embeddings
from embedsearch.index import build_index
from embedsearch.knn import leave_one_out_search

faiss.omp_set_num_threads(2)
torch.set_num_threads(2)
split = synthetic_embeddings("embedding", 100_000, 0, 384, 200, seed=0)
vectors = split.train_vectors
results = {}
for round_number in range(2):
    for spec in ("Flat", "TorchFlat.bf16"):
        start = time.perf_counter()
        index = build_index(spec, vectors, metric="ip")
        built = time.perf_counter()
        distances, ids = leave_one_out_search(index, vectors, 20)
        done = time.perf_counter()
        results.setdefault(spec, []).append(ids)
        print(f"round {round_number} {spec}: build {built - start:.2f} s, leave-one-out search {done - built:.2f} s",
              flush=True)
same = (results["Flat"][0] == results["TorchFlat.bf16"][0]).mean()
print(f"ids equal to Flat's: {same:.6f} of {results['Flat'][0].size}")
