import dataclasses
import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from embedsearch import experiment
from embedsearch.cli import main
from embedsearch.data import clustered_embeddings, digits_arrays
from embedsearch.embed import load_model
from embedsearch.experiment import DIGITS_TRAIN, ExperimentConfig, run_experiment


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


def independent_weighted_val_top1(k: int) -> tuple[float, int]:
    """DINO's weighted vote in float64 NumPy on the synthetic split: (val top-1, queries tied at the k-th neighbour)."""
    split = clustered_embeddings(3000, 300, 32, 10)
    similarity = split.val_vectors.astype(np.float64) @ split.train_vectors.astype(np.float64).T
    order = np.argsort(-similarity, axis=1, kind="stable")
    nearest = np.take_along_axis(similarity, order[:, :k + 1], axis=1)
    ambiguous = int((nearest[:, k - 1] - nearest[:, k] < 1e-5).sum())  # float32 search may order these otherwise
    scores = np.zeros((len(order), 10))
    np.add.at(scores, (np.arange(len(order))[:, None], split.train_labels[order[:, :k]]),
              np.exp(nearest[:, :k] / 0.07))
    return float((scores.argmax(axis=1) == split.val_labels).mean()), ambiguous


def test_synthetic_run_records_every_stage_and_parameter():
    start = time.perf_counter()
    result = run_experiment(ExperimentConfig(dataset="synthetic", n_train=3000, n_val=300, d=32, classes=10,
                                             ks=(5, 20), device="cpu"))
    elapsed = time.perf_counter() - start
    assert set(result.stages) == {"build", "search_train", "search_val", "classify"}
    seconds = [stage["seconds"] for stage in result.stages.values()]
    assert min(seconds) > 0 and sum(seconds) <= elapsed  # disjoint parts of the call, in seconds
    assert [row["k"] for row in result.accuracy] == [5, 20]
    record = json.loads(result.to_json())
    assert record["config"]["index"] == "Flat" and record["versions"]["faiss"]
    assert record["accuracy"] == result.accuracy
    for row in result.accuracy:
        val_top1, ambiguous = independent_weighted_val_top1(row["k"])
        assert ambiguous == 0, "a tie at the k-th neighbour would make the comparison undecidable"
        assert row["val_top1"] == val_top1


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


def test_cli_run_on_ray_shards_classifies_like_one_index(ray_cluster, tmp_path, capsys):
    local, sharded = tmp_path / "local.json", tmp_path / "ray.json"
    assert main(["run", "--device", "cpu", "--json", str(local)]) == 0
    assert main(["run", "--device", "cpu", "--engine", "ray", "--shards", "2", "--json", str(sharded)]) == 0
    local_record, sharded_record = json.loads(local.read_text()), json.loads(sharded.read_text())
    assert sharded_record["config"]["engine"] == "ray" and sharded_record["config"]["shards"] == 2
    assert sharded_record["accuracy"] == local_record["accuracy"]


def test_cli_engine_options_need_the_ray_engine(capsys):
    assert main(["run", "--shards", "2"]) == 2
    assert "--shards / --ray-address need --engine ray, got --engine local" in capsys.readouterr().err
    pytest.importorskip("ray")
    assert main(["run", "--engine", "ray", "--ray-address", "127.0.0.1:1"]) == 2
    assert "address='127.0.0.1:1': no Ray cluster answered" in capsys.readouterr().err
def test_saved_embeddings_refuse_other_synthetic_parameters(tmp_path):
    # a rerun with another --n-train, --n-val, --d or --classes silently reused the old data
    path = str(tmp_path / "emb.npz")
    small = dict(dataset="synthetic", n_train=300, n_val=50, d=16, classes=5, ks=(1,), device="cpu", embeddings=path)
    first = run_experiment(ExperimentConfig(**small))
    assert not first.embeddings_loaded and run_experiment(ExperimentConfig(**small)).embeddings_loaded
    for name, value in (("n_train", 400), ("n_val", 60), ("d", 8), ("classes", 6)):
        with pytest.raises(ValueError, match=f"embeddings='{path}' were made for .*they differ in {name}\\)"):
            run_experiment(ExperimentConfig(**small | {name: value}))


def test_saved_embeddings_refuse_a_changed_image_folder_or_weights_file(tiny_imagenet_root, tmp_path, monkeypatch):
    path = str(tmp_path / "emb.npz")
    config = ExperimentConfig(dataset=str(tiny_imagenet_root), model="test_vit", ks=(1,), device="cpu",
                              embeddings=path)
    run_experiment(config)
    extra = tiny_imagenet_root / "train" / "n01443537" / "images" / "n01443537_9.JPEG"
    extra.write_bytes((tiny_imagenet_root / "train" / "n01443537" / "images" / "n01443537_0.JPEG").read_bytes())
    with pytest.raises(ValueError, match="they differ in files"):
        run_experiment(config)
    extra.unlink()
    assert run_experiment(config).embeddings_loaded
    weights = tmp_path / "weights.pth"
    torch.save(load_model("test_vit", weights="random").model.state_dict(), weights)
    with_weights = dataclasses.replace(config, weights=str(weights), embeddings=str(tmp_path / "w.npz"))
    run_experiment(with_weights)
    torch.save({name: tensor + 1 for name, tensor in torch.load(weights).items()}, weights)
    with pytest.raises(ValueError, match="they differ in weights_sha256"):
        run_experiment(with_weights)


@pytest.mark.parametrize("content", ["random bytes", "truncated npz", "npz without key", "renamed npy"])
def test_unreadable_embeddings_files_are_named_and_exit_2(tmp_path, capsys, content):
    path = tmp_path / "emb.npz"
    if content == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif content == "renamed npy":
        np.save(tmp_path / "emb.npy", np.zeros((3, 4), dtype=np.float32))
        (tmp_path / "emb.npy").rename(path)
    else:
        assert main(["run", "--embeddings", str(path)]) == 0
        if content == "truncated npz":
            path.write_bytes(path.read_bytes()[:3000])
        else:
            with np.load(path) as stored:
                arrays = {name: stored[name] for name in stored.files if name != "key"}
            np.savez(path, **arrays)
    capsys.readouterr()
    assert main(["run", "--embeddings", str(path)]) == 2
    error = capsys.readouterr().err
    assert f"embeddings='{path}'" in error and "Traceback" not in error, error


def test_an_embeddings_folder_is_refused_before_embedding(tiny_imagenet_root, tmp_path, monkeypatch):
    # it failed after embedding and left a temporary behind
    def no_embedding(*args, **kwargs):
        raise AssertionError("embedded before checking --embeddings")

    monkeypatch.setattr(experiment, "embed_dataset", no_embedding)
    folder = tmp_path / "embeddings"
    folder.mkdir()
    with pytest.raises(ValueError, match=f"embeddings='{folder}' is a directory: expected a file path"):
        run_experiment(ExperimentConfig(dataset=str(tiny_imagenet_root), model="test_vit", ks=(1,), device="cpu",
                                        embeddings=str(folder)))
    assert list(tmp_path.glob(".*.tmp")) == []


def test_an_interrupted_embeddings_save_is_cleaned_up_by_the_next(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a writer that has gone: its temporary (as SIGKILL would leave it) is stale
    path = tmp_path / "emb.npz"
    stale = tmp_path / f".emb.npz.{socket.gethostname().replace('.', '_')}.{dead.pid}.0a0b0c0d.tmp"
    stale.write_bytes(b"half an archive")
    run_experiment(ExperimentConfig(ks=(1,), device="cpu", embeddings=str(path)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npz"]


@pytest.mark.parametrize("arguments, message", [
    (["--weights", "/nonexistent.pth"], "weights='/nonexistent.pth': expected 'pretrained', 'random' or an existing"),
    (["--batch-size", "-5"], "batch_size=-5: expected an integer >= 1"),
    (["--workers", "-3"], "workers=-3: expected an integer >= 0"),
    (["--precision", "bf16"], "precision='bf16': not used here (model='pixels' embeds raw pixels"),
    (["--batch-size", "8", "--workers", "2"], "batch_size=8, workers=2: not used here (model='pixels'"),
    (["--n-train", "5000"], "n_train=5000: not used here (they shape dataset='synthetic' only)"),
    (["--dataset", "synthetic", "--model", "test_vit"], "model='test_vit': not used here (dataset='synthetic'"),
    (["--dataset", "/nonexistent"], "dataset='/nonexistent': no such folder"),
    (["--index", "HNSW1"], "HNSW1 has M=1, expected M >= 2"),
    (["--index", "HNSW0"], "HNSW0 has M=0, expected M >= 2"),
    (["--temperature", "0"], "temperature=0.0: expected a finite number > 0"),
])
def test_run_refuses_options_that_do_not_apply_or_are_invalid(capsys, arguments, message):
    # the pixels model ignored --weights, --batch-size, --workers and --precision and recorded them
    assert main(["run", "--k", "1", *arguments]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error, error


def test_image_size_is_validated_before_anything_runs(tmp_path):
    config = ExperimentConfig(dataset="digits", model="test_vit", weights="random", device="cpu", ks=(5,),
                              image_size=8)
    with pytest.raises(ValueError, match="image_size=8: expected an integer >= 16"):
        run_experiment(config)
