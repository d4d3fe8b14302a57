import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch.utils.data import Subset

from embedsearch.data import DigitsImages, image_folder
from embedsearch import embed as embed_module
from embedsearch.embed import cpu_supports_bf16, embed_dataset, embed_images, load_model

TEST_MODEL = "test_vit"  # timm's tiny test ViT (64-d), random weights: no download


@pytest.fixture(scope="module")
def model():
    return load_model(TEST_MODEL, weights="random")


@pytest.fixture(scope="module")
def digits(model):
    return Subset(DigitsImages(transform=model.transform()), range(40))


def test_random_model_embeds_normalised_float32(model, digits):
    assert model.weights == "random" and model.embedding_dim == 64
    embeddings = embed_dataset(model, digits, batch_size=16)
    assert embeddings.shape == (40, 64) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    raw = embed_dataset(model, digits, batch_size=7, normalize=False)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), embeddings, atol=1e-5)


def test_random_weights_are_reproducible_and_leave_the_global_generator_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = load_model("test_vit", weights="random")
    assert torch.equal(torch.rand(1), expected_next)
    second = load_model("test_vit", weights="random")
    images = torch.randn(4, *first.data_config["input_size"])
    assert torch.equal(embed_images(first, images), embed_images(second, images))


def test_batch_size_does_not_change_embeddings(model, digits):
    np.testing.assert_allclose(embed_dataset(model, digits, batch_size=40),
                               embed_dataset(model, digits, batch_size=3), atol=1e-5)


def test_default_model_is_the_study_vit_s16_with_384_dims():
    vit = load_model(weights="random")
    assert vit.name == "vit_small_patch16_224.dino" and vit.embedding_dim == 384
    assert vit.data_config["input_size"] == (3, 224, 224)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_checkpoint_reproduces_the_saved_model(model, digits, tmp_path, suffix):
    state = {name: tensor.contiguous() for name, tensor in model.model.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    loaded = load_model(TEST_MODEL, weights=path)
    assert loaded.weights == f"file:{path}"
    np.testing.assert_array_equal(embed_dataset(loaded, digits), embed_dataset(model, digits))


def test_checkpoint_of_another_model_is_refused(tmp_path):
    other = load_model("test_resnet", weights="random")
    path = tmp_path / "resnet.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in other.model.state_dict().items()}, path)
    with pytest.raises(ValueError, match="does not fit VisionTransformer: missing keys"):
        load_model(TEST_MODEL, weights=path)


def test_missing_weights_file_and_unknown_model_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth.*expected 'pretrained', 'random'"):
        load_model(TEST_MODEL, weights=tmp_path / "nothing.pth")
    with pytest.raises(ValueError, match="model='vit_smal_patch16_224' is not a timm model name"):
        load_model("vit_smal_patch16_224", weights="random")


def test_pretrained_weights_that_cannot_be_fetched_fail_loudly(monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-embedsearch-cache")
    with pytest.raises(RuntimeError, match="could not get pretrained weights for 'test_vit'.*weights='random'"):
        load_model(TEST_MODEL, weights="pretrained")


def test_embedding_argument_errors(model, digits):
    with pytest.raises(ValueError, match="precision='fp16' needs a cuda device"):
        embed_dataset(model, digits, precision="fp16")
    with pytest.raises(ValueError, match="precision='int8': expected one of"):
        embed_dataset(model, digits, precision="int8")
    with pytest.raises(ValueError, match="batch_size=0"):
        embed_dataset(model, digits, batch_size=0)
    with pytest.raises(ValueError, match="dataset is empty"):
        embed_dataset(model, Subset(digits, []))


def test_image_folder_tree_embeds_end_to_end(model, tiny_imagenet_root):
    dataset = image_folder(tiny_imagenet_root / "train", transform=model.transform())
    assert embed_dataset(model, dataset, batch_size=4).shape == (6, 64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_embeddings_match_cpu(digits, precision):
    cpu = load_model(TEST_MODEL, weights="random")
    gpu = load_model(TEST_MODEL, weights="random", device="cuda")
    gpu.model.load_state_dict(cpu.model.state_dict())
    tolerance = 1e-4 if precision == "fp32" else 5e-2
    np.testing.assert_allclose(embed_dataset(gpu, digits, precision=precision), embed_dataset(cpu, digits),
                               atol=tolerance)


@pytest.mark.parametrize("suffix, content", [
    (".pth", b""), (".pth", b"not a checkpoint\n"), (".pth", "truncated"),
    (".safetensors", b"not a checkpoint\n"), (".safetensors", "truncated"),
])
def test_unreadable_checkpoints_are_named(model, tmp_path, suffix, content):
    # torch.load and safetensors raised Errno 22, EOFError '' or KeyError 101, naming no file
    path = tmp_path / f"weights{suffix}"
    if content == "truncated":
        state = {name: tensor.contiguous() for name, tensor in model.model.state_dict().items()}
        save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
        path.write_bytes(path.read_bytes()[:1000])
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=f"weights file '{path}' could not be read as a checkpoint"):
        load_model(TEST_MODEL, weights=path)


@pytest.mark.skipif(not cpu_supports_bf16(), reason="CPU without AVX512-BF16 or AMX")
def test_bf16_cpu_embeddings_are_close_to_fp32(model, digits):
    bf16 = embed_dataset(model, digits, batch_size=16, precision="bf16")
    fp32 = embed_dataset(model, digits, batch_size=16)
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(bf16, axis=1), 1.0, rtol=1e-5)
    cosines = (bf16 * fp32).sum(axis=1)
    assert cosines.min() > 0.99 and not np.array_equal(bf16, fp32)  # autocast really ran in bf16


def test_bf16_on_a_cpu_without_bf16_instructions_is_refused(model, digits, monkeypatch):
    monkeypatch.setattr(embed_module, "cpu_supports_bf16", lambda: False)
    with pytest.raises(ValueError, match="precision='bf16' on cpu needs a CPU with AVX512-BF16 or AMX"):
        embed_dataset(model, digits, precision="bf16")


def test_timm_version_is_the_loaded_modules_else_its_metadatas(monkeypatch):
    import importlib.metadata
    import sys

    import timm

    assert embed_module.timm_version() == timm.__version__ == importlib.metadata.version("timm")
    monkeypatch.setattr(embed_module, "version", lambda name: f"{name} metadata")
    monkeypatch.delitem(sys.modules, "timm")  # not loaded: the metadata's
    assert embed_module.timm_version() == "timm metadata"
    monkeypatch.setitem(sys.modules, "timm", timm)  # loaded: the module's, whatever the metadata says
    assert embed_module.timm_version() == timm.__version__
