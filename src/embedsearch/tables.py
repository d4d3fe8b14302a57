"""A study run's result as aligned text: its table row with the k sweep, and its figures beside the study's."""

from __future__ import annotations

from pathlib import Path

from .experiment import ExperimentResult
from .study import STUDY_FIGURES, main_row


def format_table(result: ExperimentResult) -> str:
    """The study's table (one row) and the k sweep, as aligned text."""
    def seconds(name: str) -> str:
        stage = result.stages.get(name)
        return f"{stage['seconds']:.2f}" if stage else "-"

    embed_seconds = sum(result.stages[n]["seconds"] for n in ("embed_train", "embed_val") if n in result.stages)
    peaks = [s["peak_rss_bytes"] for s in result.stages.values() if s["peak_rss_bytes"] is not None]
    main = main_row(result.accuracy)
    main_k = main["k"]
    header = ("data set", "device", "train x val x d", "embed s", "build s", "train search s", "val search s",
              "train top-1", "val top-1", "val top-5", "k", "peak RSS MiB")
    row = (Path(result.config["dataset"]).name or result.config["dataset"], result.device,
           f"{result.n_train} x {result.n_val} x {result.d}",
           f"{embed_seconds:.2f}" if any(n.startswith("embed") for n in result.stages) else "-",
           seconds("build"), seconds("search_train"), seconds("search_val"),
           f"{main['train_top1']:.2%}", f"{main['val_top1']:.2%}", f"{main['val_top5']:.2%}", str(main_k),
           f"{max(peaks) / 2**20:.0f}" if peaks else "-")
    lines = [_aligned([header, row])]
    sweep = [("k", "vote", "train top-1", "train top-5", "val top-1", "val top-5")]
    sweep += [(str(r["k"]), r["vote"], f"{r['train_top1']:.2%}", f"{r['train_top5']:.2%}",
               f"{r['val_top1']:.2%}", f"{r['val_top5']:.2%}") for r in result.accuracy]
    lines += ["", "k sweep:", _aligned(sweep)]
    return "\n".join(lines)


def format_study_comparison(result: ExperimentResult, study_dataset: str) -> str:
    """This run's figures next to the study's published rows for `study_dataset`, with ratios."""
    if study_dataset not in STUDY_FIGURES:
        raise ValueError(f"study dataset {study_dataset!r}: published figures exist for {sorted(STUDY_FIGURES)}")
    ours = {name: stage["seconds"] for name, stage in result.stages.items()}
    ours["embed"] = sum(ours.pop(n, 0.0) for n in ("embed_train", "embed_val")) or None
    main = main_row(result.accuracy)
    ours.update(train_top1=main["train_top1"], val_top1=main["val_top1"])
    lines = [f"study ({study_dataset}, DINO ViT-S/16, Flat, k=20 weighted) vs this run "
             f"({result.n_train} train x {result.n_val} val x {result.d}-d, {result.device}, k={main['k']}):"]
    table = [("figure", "study device", "study", "this run", "this / study")]
    for device, figures in STUDY_FIGURES[study_dataset].items():
        for name in ("embed", "build", "search_train", "search_val", "train_top1", "val_top1"):
            if name in figures and ours.get(name) is not None:
                table.append((name, device, f"{figures[name]:g}", f"{ours[name]:.4g}", f"{ours[name] / figures[name]:.4g}"))
    lines.append(_aligned(table))
    study_n = STUDY_FIGURES[study_dataset]["gpu"]["n_train"]
    lines.append(f"note: train search work grows as n_train^2 (leave-one-out over all train points): the study's "
                 f"{study_n} train points are {(study_n / result.n_train) ** 2:.1f}x this run's work at equal d.")
    return "\n".join(lines)


def _aligned(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows)
