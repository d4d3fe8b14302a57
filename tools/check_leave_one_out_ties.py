"""Where Flat and TorchFlat.bf16 leave-one-out ids differ (100k x 384, k=20), are the scores tied in float64?

    python tools/check_leave_one_out_ties.py
"""
import faiss, numpy as np, torch
from embedsearch.data import synthetic_embeddings
from embedsearch.index import build_index
from embedsearch.knn import leave_one_out_search
faiss.omp_set_num_threads(2); torch.set_num_threads(2)
x = synthetic_embeddings("embedding", 100_000, 0, 384, 200, seed=0).train_vectors
res = {spec: leave_one_out_search(build_index(spec, x, metric="ip"), x, 20) for spec in ("Flat", "TorchFlat.bf16")}
(df, idf), (db, idb) = res["Flat"], res["TorchFlat.bf16"]
rows = np.nonzero((idf != idb).any(axis=1))[0]
print("rows differing:", len(rows), "ids differing:", int((idf != idb).sum()))
x64 = x.astype(np.float64)
for r in rows:
    sf = np.sort(x64[idf[r]] @ x64[r])[::-1]; sb = np.sort(x64[idb[r]] @ x64[r])[::-1]
    only_f = set(idf[r]) - set(idb[r]); only_b = set(idb[r]) - set(idf[r])
    f64 = lambda ids: [float(x64[i] @ x64[r]) for i in ids]
    kth = np.sort(x64[idf[r]] @ x64[r])[0]
    print(r, "sets equal" if not only_f else f"only Flat {f64(only_f)} only bf16 {f64(only_b)}", "fp64 kth", kth,
          "score lists equal (fp64 sorted)", np.allclose(sf, sb, rtol=0, atol=1e-6))
