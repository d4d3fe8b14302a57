import json

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from embedsearch.cli import main
from embedsearch.data import digits_arrays
from embedsearch.experiment import DIGITS_TRAIN, ExperimentConfig, format_study_comparison, run_experiment


def independent_majority_knn(k: int) -> tuple[float, float, int]:
    """scikit-learn's brute-force kNN on L2-normalised digits pixels: (train LOO top-1, val top-1, ambiguous).

    Queries whose k-th and (k+1)-th neighbour distances tie (in float64) have no unique neighbour
    set; they are counted so the test can tell ties from disagreement.
    """
    pixels, labels = digits_arrays()
    vectors = pixels.astype(np.float64) / np.linalg.norm(pixels, axis=1, keepdims=True)
    train, val = vectors[:DIGITS_TRAIN], vectors[DIGITS_TRAIN:]
    classifier = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(train, labels[:DIGITS_TRAIN])
    val_top1 = float((classifier.predict(val) == labels[DIGITS_TRAIN:]).mean())
    _, train_ids = classifier.kneighbors(None, n_neighbors=k)  # X=None: each point's neighbours exclude itself
    votes = labels[:DIGITS_TRAIN][train_ids]
    train_predictions = np.array([np.bincount(row, minlength=10).argmax() for row in votes])  # ties: smallest
    train_top1 = float((train_predictions == labels[:DIGITS_TRAIN]).mean())
    ambiguous = 0
    for queries, exclude_self in ((val, False), (train, True)):
        distances = np.sort(((queries[:, None, :] - train[None, :, :]) ** 2).sum(-1), axis=1)
        boundary = distances[:, k - 1 + exclude_self:k + 1 + exclude_self]
        ambiguous += int((np.abs(boundary[:, 1] - boundary[:, 0]) < 1e-9).sum())
    return train_top1, val_top1, ambiguous


@pytest.mark.parametrize("index", ["Flat", "TorchFlat"])
def test_digits_pixels_majority_vote_matches_scikit_learn(index):
    # k = 10 and 20 have one query each with a tie at the k-th neighbour; these ks have none
    result = run_experiment(ExperimentConfig(dataset="digits", model="pixels", index=index, ks=(1, 3, 7, 15),
                                             vote="majority", device="cpu"))
    for row in result.accuracy:
        train_top1, val_top1, ambiguous = independent_majority_knn(row["k"])
        assert ambiguous == 0, "a tie at the k-th neighbour would make the comparison undecidable"
        assert row["val_top1"] == val_top1
        assert row["train_top1"] == train_top1
    assert result.n_train == 1297 and result.n_val == 500 and result.d == 64


def test_synthetic_run_records_every_stage_and_parameter():
    result = run_experiment(ExperimentConfig(dataset="synthetic", n_train=3000, n_val=300, d=32, classes=10,
                                             ks=(5, 20), device="cpu"))
    assert set(result.stages) == {"build", "search_train", "search_val", "classify"}
    assert all(stage["seconds"] >= 0 for stage in result.stages.values())
    assert [row["k"] for row in result.accuracy] == [5, 20]
    record = json.loads(result.to_json())
    assert record["config"]["index"] == "Flat" and record["versions"]["faiss"]
    assert 0.0 <= record["accuracy"][0]["val_top1"] <= 1.0


def test_tiny_imagenet_tree_runs_with_a_random_timm_model(tiny_imagenet_root, tmp_path):
    config = ExperimentConfig(dataset=str(tiny_imagenet_root), model="test_vit", weights="random", ks=(1, 3),
                              device="cpu", batch_size=4, embeddings=str(tmp_path / "emb.npz"))
    first = run_experiment(config)
    assert first.n_train == 6 and first.n_val == 4 and first.n_classes == 3 and first.weights == "random"
    assert {"embed_train", "embed_val"} <= set(first.stages) and not first.embeddings_loaded
    second = run_experiment(config)  # reloads the saved embeddings: no embedding stage, same results
    assert second.embeddings_loaded and "embed_train" not in second.stages
    assert second.accuracy == first.accuracy


def test_saved_embeddings_refuse_another_model(tiny_imagenet_root, tmp_path):
    path = str(tmp_path / "emb.npz")
    run_experiment(ExperimentConfig(dataset=str(tiny_imagenet_root), model="test_vit", ks=(1,), device="cpu",
                                    embeddings=path))
    with pytest.raises(ValueError, match="were made for"):
        run_experiment(ExperimentConfig(dataset=str(tiny_imagenet_root), model="test_resnet", ks=(1,),
                                        device="cpu", embeddings=path))


def test_experiment_errors(tmp_path):
    with pytest.raises(ValueError, match="ks=\\(0,\\)"):
        run_experiment(ExperimentConfig(ks=(0,)))
    with pytest.raises(ValueError, match="expected k <= 1296"):
        run_experiment(ExperimentConfig(ks=(5000,), device="cpu"))
    with pytest.raises(ValueError, match="dataset=.*expected 'digits', 'synthetic'"):
        run_experiment(ExperimentConfig(dataset=str(tmp_path), model="test_vit", device="cpu"))
    with pytest.raises(ValueError, match="model='pixels' works on dataset='digits' only"):
        run_experiment(ExperimentConfig(dataset=str(tmp_path), device="cpu"))


def test_cli_run_prints_table_sweep_json_and_study_comparison(tmp_path, capsys):
    record = tmp_path / "run.json"
    assert main(["run", "--json", str(record), "--compare-study"]) == 0
    output = capsys.readouterr().out
    assert "train search s" in output and "k sweep:" in output and "search_train" in output
    assert json.loads(record.read_text())["config"]["dataset"] == "digits"


def test_study_comparison_names_known_datasets_only():
    result = run_experiment(ExperimentConfig(device="cpu", ks=(20,)))
    assert "4689" in format_study_comparison(result, "imagenet")
    with pytest.raises(ValueError, match="published figures exist for \\['imagenet'\\]"):
        format_study_comparison(result, "cifar")


def test_image_size_is_validated_before_anything_runs(tmp_path):
    config = ExperimentConfig(dataset="digits", model="test_vit", weights="random", device="cpu", ks=(5,),
                              image_size=8)
    with pytest.raises(ValueError, match="image_size=8: expected an integer >= 16"):
        run_experiment(config)
