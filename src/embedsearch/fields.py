"""The fields a benchmark records in its `extra_info`, declared once: name, unit, and whether the gates compare it.

The perf suite writes only declared fields (perf/records.py refuses others); the gates
(`compare.compare_figures`), the suite's summary and the history page read them by these names.
A unit of "label" is a name or a setting, not a quantity; "flag" is true or false.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    name: str
    unit: str
    gated: bool = False  # compared between runs by both gates (compare.compare_figures)


FIELDS: dict[str, Field] = {}


def _declare(name: str, unit: str, gated: bool = False) -> str:
    FIELDS[name] = Field(name, unit, gated)
    return name


# Parameters of a case
STAGE = _declare("stage", "label")  # build stage: "train" or "add"
SPEC = _declare("spec", "label")  # index spec (FAISS factory string, TorchFlat, TorchFlat.bf16)
N = _declare("n", "vectors")
D = _declare("d", "dimensions")
K = _declare("k", "neighbours")
NQ = _declare("nq", "queries")
METRIC = _declare("metric", "label")
DEVICE = _declare("device", "label")
DTYPE = _declare("dtype", "label")
PARAMS = _declare("params", "label")  # search parameters, e.g. {"nprobe": 16}
THREADS = _declare("threads", "threads")
VERSIONS = _declare("versions", "label")  # library versions
MODEL = _declare("model", "label")
WEIGHTS = _declare("weights", "label")
PRECISION = _declare("precision", "label")
BATCH_SIZE = _declare("batch_size", "images")
INPUT_SIZE = _declare("input_size", "pixels")  # [channels, height, width]
IMAGE_SIZE = _declare("image_size", "pixels")
EMBEDDING_DIM = _declare("embedding_dim", "dimensions")
CLASSES = _declare("classes", "classes")
VOTE = _declare("vote", "label")
SIZE = _declare("size", "elements")  # side of the square calibration matmul
BYTES = _declare("bytes", "bytes")  # bytes copied by the bandwidth calibration
SCALING = _declare("scaling", "flag")  # true: one point of a time-vs-n series (stats.scaling_exponents)
SCALING_MODE = _declare("scaling_mode", "label")  # Ray search: "strong" (n fixed) or "weak" (n per worker fixed)
WORKERS = _declare("workers", "workers")
THREADS_PER_WORKER = _declare("threads_per_worker", "threads")
IMAGES = _declare("images", "images")

# The data set (DataCache.dataset_record, embedsearch.vectors' record, metrics.dataset_difficulty)
DATASET = _declare("dataset", "label")
DATASET_HASH = _declare("dataset_hash", "label")  # first 12 hex digits of a SHA-256
DATASET_N = _declare("dataset_n", "vectors")
DATASET_D = _declare("dataset_d", "dimensions")
NORMALIZED = _declare("normalized", "flag")
QUERY_SOURCE = _declare("query_source", "label")
TRUTH_SOURCE = _declare("truth_source", "label")
LID20 = _declare("lid20", "dimensions")  # local intrinsic dimensionality from the 20 nearest
LID100 = _declare("lid100", "dimensions")
RC = _declare("rc", "ratio")  # relative contrast

# Derived figures
QUERIES_PER_S = _declare("queries_per_s", "queries/s")
VECTORS_PER_S = _declare("vectors_per_s", "vectors/s")
IMAGES_PER_S = _declare("images_per_s", "images/s")
IMAGES_PER_S_PER_WORKER = _declare("images_per_s_per_worker", "images/s")
GFLOPS = _declare("gflops", "GFLOP/s")
BANDWIDTH_GBS = _declare("bandwidth_gbs", "GB/s")
RECALL = _declare("recall", "fraction", gated=True)  # recall@k against exact ground truth
TOP1 = _declare("top1", "fraction", gated=True)
TOP5 = _declare("top5", "fraction")
CERTIFIED_FRACTION = _declare("certified_fraction", "fraction")
MEAN_COSINE_TO_FP32 = _declare("mean_cosine_to_fp32", "cosine")
KNN_TOP1_CHANGE = _declare("knn_top1_change", "fraction")
KNN_TOP1_FP32 = _declare("knn_top1_fp32", "fraction")
INDEX_BYTES = _declare("index_bytes", "bytes", gated=True)
THEORY_BYTES = _declare("theory_bytes", "bytes")
BYTES_VS_THEORY = _declare("bytes_vs_theory", "ratio")
PEAK_BYTES = _declare("peak_bytes", "bytes", gated=True)
GPU_PEAK_BYTES = _declare("gpu_peak_bytes", "bytes", gated=True)
MODEL_BYTES = _declare("model_bytes", "bytes")  # the stated memory model of the operation
PEAK_VS_MODEL = _declare("peak_vs_model", "ratio")
MEMRAY_CAPTURE = _declare("memray_capture", "label")  # path of the kept memray capture
OVERHEAD = _declare("overhead", "fraction")
BARE_SECONDS = _declare("bare_seconds", "seconds")
EFFICIENCY = _declare("efficiency", "fraction")
TIME_VS_IN_PROCESS = _declare("time_vs_in_process", "ratio")
LATENCY_P50_S = _declare("latency_p50_s", "seconds")
LATENCY_P95_S = _declare("latency_p95_s", "seconds")
LATENCY_P99_S = _declare("latency_p99_s", "seconds")
EMBED_TRAIN_SECONDS = _declare("embed_train_seconds", "seconds")
EMBED_VAL_SECONDS = _declare("embed_val_seconds", "seconds")
BUILD_SECONDS = _declare("build_seconds", "seconds")
SEARCH_TRAIN_SECONDS = _declare("search_train_seconds", "seconds")
SEARCH_VAL_SECONDS = _declare("search_val_seconds", "seconds")
CLASSIFY_SECONDS = _declare("classify_seconds", "seconds")
