import pytest

from embedsearch.experiment import ExperimentResult
from embedsearch.tables import format_study_comparison, format_table


def stage(seconds: float, peak_rss_bytes: int | None) -> dict:
    return {"seconds": seconds, "peak_rss_bytes": peak_rss_bytes}


def row(k: int, vote: str, train_top1: float, train_top5: float, val_top1: float, val_top5: float) -> dict:
    return {"k": k, "vote": vote, "train_top1": train_top1, "train_top5": train_top5, "val_top1": val_top1,
            "val_top5": val_top5}


EMBEDDED = ExperimentResult(
    config={"dataset": "/data/tiny-imagenet-200"}, n_train=100_000, n_val=10_000, d=384, n_classes=200,
    device="cpu", weights="pretrained", embeddings_loaded=False,
    stages={"embed_train": stage(600.0, 2**30), "embed_val": stage(60.5, 3 * 2**29), "build": stage(0.0123, None),
            "search_train": stage(41.237, 2**31), "search_val": stage(4.0, None), "classify": stage(0.5, None)},
    accuracy=[row(10, "weighted", 0.81234, 0.95, 0.7, 0.9), row(20, "weighted", 0.8, 0.96, 0.71, 0.91),
              row(50, "weighted", 0.79, 0.97, 0.69, 0.92)])
LOADED = ExperimentResult(
    config={"dataset": "digits"}, n_train=1297, n_val=500, d=64, n_classes=10, device="cpu",
    weights="none (pixels)", embeddings_loaded=True,
    stages={"build": stage(0.001, None), "search_train": stage(0.02, None), "search_val": stage(0.01, None),
            "classify": stage(0.003, None)},
    accuracy=[row(5, "majority", 0.9, 1.0, 0.95, 0.99), row(30, "majority", 0.85, 0.98, 0.9, 0.97)])


def test_table_shows_the_study_k_row_summed_embedding_and_the_largest_peak():
    assert format_table(EMBEDDED) == """\
         data set  device       train x val x d  embed s  build s  train search s  val search s  train top-1  val top-1  val top-5   k  peak RSS MiB
tiny-imagenet-200     cpu  100000 x 10000 x 384   660.50     0.01           41.24          4.00       80.00%     71.00%     91.00%  20          2048

k sweep:
 k      vote  train top-1  train top-5  val top-1  val top-5
10  weighted       81.23%       95.00%     70.00%     90.00%
20  weighted       80.00%       96.00%     71.00%     91.00%
50  weighted       79.00%       97.00%     69.00%     92.00%"""


def test_table_without_embedding_or_peaks_shows_dashes_and_the_largest_k():
    assert format_table(LOADED) == """\
data set  device  train x val x d  embed s  build s  train search s  val search s  train top-1  val top-1  val top-5   k  peak RSS MiB
  digits     cpu  1297 x 500 x 64        -     0.00            0.02          0.01       85.00%     90.00%     97.00%  30             -

k sweep:
 k      vote  train top-1  train top-5  val top-1  val top-5
 5  majority       90.00%      100.00%     95.00%     99.00%
30  majority       85.00%       98.00%     90.00%     97.00%"""


def test_study_comparison_sets_each_figure_beside_the_published_one():
    assert format_study_comparison(EMBEDDED, "imagenet") == """\
study (imagenet, DINO ViT-S/16, Flat, k=20 weighted) vs this run (100000 train x 10000 val x 384-d, cpu, k=20):
      figure  study device   study  this run  this / study
       embed           gpu    3862     660.5         0.171
       build           gpu    0.29    0.0123       0.04241
search_train           gpu  108.72     41.24        0.3793
  search_val           gpu    4.24         4        0.9434
  train_top1           gpu  0.8347       0.8        0.9584
    val_top1           gpu  0.7777      0.71        0.9129
search_train           cpu    4689     41.24      0.008794
note: train search work grows as n_train^2 (leave-one-out over all train points): the study's 1281167 train points \
are 164.1x this run's work at equal d."""
    without_embedding = format_study_comparison(LOADED, "imagenet").splitlines()
    assert without_embedding[0].endswith("(1297 train x 500 val x 64-d, cpu, k=30):")
    assert [line.split()[0] for line in without_embedding[2:-1]] == [
        "build", "search_train", "search_val", "train_top1", "val_top1", "search_train"]


def test_study_comparison_names_known_datasets_only():
    with pytest.raises(ValueError, match="study dataset 'cifar': published figures exist for \\['imagenet'\\]"):
        format_study_comparison(EMBEDDED, "cifar")
