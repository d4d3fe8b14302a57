import numpy as np
import pytest

from embedsearch.data import (DigitsImages, clustered_embeddings, digits_arrays, image_folder,
                              is_tiny_imagenet, tiny_imagenet)


def test_clustered_embeddings_are_deterministic_float32_contiguous_and_normalised():
    first = clustered_embeddings(300, 50, 16, 5, seed=3)
    second = clustered_embeddings(300, 50, 16, 5, seed=3)
    other = clustered_embeddings(300, 50, 16, 5, seed=4)
    for array in (first.train_vectors, first.val_vectors):
        assert array.dtype == np.float32 and array.flags.c_contiguous
        np.testing.assert_allclose(np.linalg.norm(array, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(first.train_vectors, second.train_vectors)
    np.testing.assert_array_equal(first.val_labels, second.val_labels)
    assert not np.array_equal(first.train_vectors, other.train_vectors)
    assert first.train_vectors.shape == (300, 16) and first.val_vectors.shape == (50, 16)
    assert np.bincount(first.train_labels).tolist() == [60] * 5


def test_separation_controls_class_structure():
    """Points are nearer their own class centre's direction when separation is larger."""
    def own_class_cosine(separation):
        split = clustered_embeddings(1000, 0, 64, 4, separation=separation, seed=0)
        means = np.stack([split.train_vectors[split.train_labels == c].mean(0) for c in range(4)])
        means /= np.linalg.norm(means, axis=1, keepdims=True)
        return float((split.train_vectors * means[split.train_labels]).sum(1).mean())
    assert own_class_cosine(0.1) < own_class_cosine(0.5) < own_class_cosine(2.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_train=0), "n_train=0"),
    (dict(d=0), "d=0"),
    (dict(n_classes=0), "n_classes=0"),
    (dict(n_classes=200), "n_classes=200 exceeds n_train=100"),
    (dict(separation=-1.0), "separation=-1.0"),
    (dict(separation=float("nan")), "separation=nan"),
    (dict(n_train=True), "n_train=True: expected an integer >= 1"),
    (dict(seed="0"), "seed='0': expected an integer >= 0"),
    (dict(seed=-1), "seed=-1: expected an integer >= 0"),
])
def test_clustered_embeddings_rejects_bad_arguments(kwargs, message):
    arguments = dict(n_train=100, n_val=10, d=8, n_classes=4) | kwargs
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        clustered_embeddings(**arguments)


@pytest.mark.parametrize("separation", ["0.27", None])
def test_clustered_embeddings_names_a_separation_of_the_wrong_type(separation):
    with pytest.raises(TypeError, match=f"separation={separation!r}: expected a finite number >= 0"):
        clustered_embeddings(100, 10, 8, 4, separation=separation)


def test_unreadable_images_are_named(tiny_imagenet_root):
    # PIL's "OSError: Truncated File Read" came without the file, after the train set was embedded
    corrupt = tiny_imagenet_root / "val" / "images" / "val_1.JPEG"
    corrupt.write_bytes(corrupt.read_bytes()[:200])
    _, val = tiny_imagenet(tiny_imagenet_root)
    with pytest.raises(ValueError, match=f"image '{corrupt}' could not be read: OSError"):
        val[1]
    not_an_image = tiny_imagenet_root / "train" / "n01443537" / "images" / "n01443537_1.JPEG"
    not_an_image.write_text("hello")
    train = image_folder(tiny_imagenet_root / "train")
    with pytest.raises(ValueError, match=f"image '{not_an_image}' could not be read: UnidentifiedImageError"):
        train[1]


def test_binary_val_annotations_are_named(tiny_imagenet_root):
    annotations = tiny_imagenet_root / "val" / "val_annotations.txt"
    annotations.write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match=f"'{annotations}' is not UTF-8 text"):
        tiny_imagenet(tiny_imagenet_root)


def test_image_folder_reads_classes_and_reports_missing_root(tiny_imagenet_root, tmp_path):
    dataset = image_folder(tiny_imagenet_root / "train")
    assert len(dataset) == 6 and dataset.classes == ["n01443537", "n01629819", "n01641577"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        image_folder(tmp_path / "nowhere")


def test_tiny_imagenet_layout_labels_val_with_train_class_indices(tiny_imagenet_root):
    assert is_tiny_imagenet(tiny_imagenet_root)
    train, val = tiny_imagenet(tiny_imagenet_root)
    assert len(train) == 6 and len(val) == 4
    assert val.targets == [2, 0, 1, 2]
    image, label = val[0]
    assert image.size == (16, 16) and label == 2
    # the image written for class c has pixel value 40 * c
    assert image.getpixel((0, 0))[0] == 80


def test_tiny_imagenet_rejects_other_layouts_and_unknown_wnids(tiny_imagenet_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a Tiny ImageNet folder"):
        tiny_imagenet(tmp_path / "train")
    annotations = tiny_imagenet_root / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text() + "val_9.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="n99999999"):
        tiny_imagenet(tiny_imagenet_root)


def test_digits_arrays_and_images_agree():
    pixels, labels = digits_arrays()
    assert pixels.shape == (1797, 64) and pixels.dtype == np.float32 and labels.shape == (1797,)
    images = DigitsImages(indices=np.array([5, 7]))
    image, label = images[1]
    assert image.mode == "RGB" and image.size == (8, 8) and label == labels[7]
    assert images.targets.tolist() == [labels[5], labels[7]]  # the experiment reads val labels from here
    expected = np.round(pixels[7].reshape(8, 8) * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(image)[:, :, 0], expected)


def test_embedding_like_is_deterministic_normalised_and_labelled():
    from embedsearch.data import embedding_like

    first = embedding_like(500, 50, 64, 5, seed=3)
    again = embedding_like(500, 50, 64, 5, seed=3)
    np.testing.assert_array_equal(first.train_vectors, again.train_vectors)
    assert not np.array_equal(first.train_vectors, embedding_like(500, 50, 64, 5, seed=4).train_vectors)
    for array in (first.train_vectors, first.val_vectors):
        assert array.dtype == np.float32 and array.flags.c_contiguous
        np.testing.assert_allclose(np.linalg.norm(array, axis=1), 1.0, rtol=1e-5)
    assert first.train_vectors.shape == (500, 64) and np.bincount(first.train_labels).tolist() == [100] * 5


@pytest.mark.parametrize("kwargs, message", [
    (dict(latent_dim=100), "latent_dim=100 exceeds d=64"),
    (dict(local_dim=0), "local_dim=0"),
    (dict(spread=-1.0), "spread=-1.0"),
    (dict(noise=float("nan")), "noise=nan"),
])
def test_embedding_like_rejects_bad_arguments(kwargs, message):
    from embedsearch.data import embedding_like

    with pytest.raises(ValueError, match=message):
        embedding_like(100, 10, 64, 4, **kwargs)


def test_synthetic_presets():
    from embedsearch.data import synthetic_embeddings

    hard = synthetic_embeddings("hard", 100, 10, 16, 4, seed=1)
    np.testing.assert_array_equal(hard.train_vectors, clustered_embeddings(100, 10, 16, 4, seed=1).train_vectors)
    with pytest.raises(ValueError, match="preset='easy': expected one of 'embedding', 'hard'"):
        synthetic_embeddings("easy", 100, 10, 16, 4)
