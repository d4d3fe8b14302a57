"""End to end on digits (1297 train / 500 val): embed -> build -> search -> classify, timed per stage."""

from embedsearch.experiment import ExperimentConfig, run_experiment
from harness import record


def test_end_to_end(benchmark, end_to_end_case, device, threads):
    config = ExperimentConfig(dataset="digits", model=end_to_end_case["model"], weights="random", device=device,
                              ks=(end_to_end_case["k"],), vote="weighted")
    benchmark.group = f"end-to-end digits {device}"
    result = benchmark.pedantic(run_experiment, args=(config,), rounds=3)
    assert result.n_train == 1297 and result.n_val == 500
    stage_seconds = {f"{name}_seconds": stage["seconds"] for name, stage in result.stages.items()}
    record(benchmark, threads, model=config.model, weights="random", device=device, k=config.ks[0],
           vote=config.vote, spec=config.index, n=result.n_train, nq=result.n_val, d=result.d,
           top1=result.accuracy[0]["val_top1"], **stage_seconds)
