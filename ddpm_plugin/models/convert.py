"""Conversion of a `diffusers.UNet2DModel` in the DDPM layout (e.g. `google/ddpm-cifar10-32`) to `DDPMUNet2DModel`.

The published DDPM checkpoints are `UNet2DModel`s built from `DownBlock2D` / `AttnDownBlock2D`, `UNetMidBlock2D` and
`UpBlock2D` / `AttnUpBlock2D` with a positional (sinusoidal) time embedding. `DDPMUNet2DModel` computes the same
function; this module derives its config from the `UNet2DModel` config and renames every weight by rule (the
model is built by `DDPMUNet2DModel.from_diffusers_unet`), refusing any layout or weight it does not account for.

```py
>>> from diffusers import UNet2DModel
>>> from ddpm_plugin import DDPMUNet2DModel

>>> unet = DDPMUNet2DModel.from_diffusers_unet(UNet2DModel.from_pretrained("google/ddpm-cifar10-32"))
```
"""

import re
from collections.abc import Mapping
from typing import Any

import torch
from diffusers import UNet2DModel

__all__ = ["ddpm_config_from_unet2d_config", "unet2d_key_to_ddpm_key", "unet2d_state_dict_to_ddpm"]

_DOWN_BLOCKS = {"DownBlock2D": False, "AttnDownBlock2D": True}  # block type -> has attention
_UP_BLOCKS = {"UpBlock2D": False, "AttnUpBlock2D": True}

# UNet2DModel config fields that must hold one of these values (anything else is another architecture)
_REQUIRED_VALUES: dict[str, tuple[Any, ...]] = {
    "center_input_sample": (False,),
    "time_embedding_type": ("positional",),
    "mid_block_type": ("UNetMidBlock2D",),
    "mid_block_scale_factor": (1, 1.0),
    "downsample_type": ("conv",),
    "upsample_type": ("conv",),
    "act_fn": ("silu", "swish"),
    "resnet_time_scale_shift": ("default", "scale_shift"),
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
}


def ddpm_config_from_unet2d_config(config: Mapping[str, Any], learned_variance: bool = False) -> dict[str, Any]:
    """
    Translates a `UNet2DModel` config in the DDPM layout into `DDPMUNet2DModel` keyword arguments.

    Args:
        config (`Mapping[str, Any]`): `unet.config` of a `diffusers.UNet2DModel`.
        learned_variance (`bool`): the UNet predicts `[eps, v]` (ND (15)); its `out_channels` is then split in two.

    Returns:
        `dict[str, Any]`: the arguments of `DDPMUNet2DModel(...)`.

    Raises:
        `ValueError`: naming the config field whose value `DDPMUNet2DModel` cannot represent.
    """

    def unsupported(field: str, value: Any, allowed: str) -> ValueError:
        return ValueError(
            f"Cannot convert this UNet2DModel to DDPMUNet2DModel: unsupported {field}={value!r} ({allowed})."
        )

    for field, allowed in _REQUIRED_VALUES.items():
        value = config.get(field, allowed[0])
        if value not in allowed:
            raise unsupported(field, value, f"supported: {', '.join(repr(a) for a in allowed)}")

    down_types = tuple(config["down_block_types"])
    up_types = tuple(config["up_block_types"])
    block_out_channels = tuple(config["block_out_channels"])
    num_levels = len(block_out_channels)
    for types, known, field in [
        (down_types, _DOWN_BLOCKS, "down_block_types"),
        (up_types, _UP_BLOCKS, "up_block_types"),
    ]:
        bad = [t for t in types if t not in known]
        if bad:
            raise unsupported(field, types, f"block types must be among {sorted(known)}, found {bad}")
        if len(types) != num_levels:
            raise unsupported(field, types, f"expected one block per entry of block_out_channels={block_out_channels}")

    # DDPMUNet2DModel places attention by resolution, so level i must have attention on both paths or on neither
    down_attn = [_DOWN_BLOCKS[t] for t in down_types]
    up_attn = [_UP_BLOCKS[t] for t in reversed(up_types)]
    if down_attn != up_attn:
        raise unsupported(
            "down_block_types/up_block_types",
            (down_types, up_types),
            "attention must sit at the same resolutions on the down and the up path",
        )

    model_channels = block_out_channels[0]
    if any(c % model_channels for c in block_out_channels):
        raise unsupported(
            "block_out_channels", block_out_channels, f"every entry must be a multiple of the first ({model_channels})"
        )
    channel_mult = tuple(c // model_channels for c in block_out_channels)

    sample_size = config.get("sample_size")
    if isinstance(sample_size, list | tuple):
        if len(set(sample_size)) != 1:
            raise unsupported("sample_size", sample_size, "only square samples are supported")
        sample_size = sample_size[0]
    if not isinstance(sample_size, int):
        raise unsupported("sample_size", sample_size, "an int is needed to place attention by resolution")
    attention_resolutions = tuple(sample_size // 2**level for level in range(num_levels) if down_attn[level])

    norm_num_groups = config.get("norm_num_groups", 32)
    if norm_num_groups is None:
        raise unsupported("norm_num_groups", None, "an explicit number of GroupNorm groups is needed")
    time_scale_shift = config.get("resnet_time_scale_shift", "default")
    add_attention = config.get("add_attention", True)
    attn_norm_num_groups = config.get("attn_norm_num_groups")
    # UNetMidBlock2D gives its attention GroupNorm `attn_norm_num_groups` groups, or `norm_num_groups` groups under
    # "default" time embedding and no GroupNorm at all under "scale_shift"
    mid_attn_groups = attn_norm_num_groups
    if mid_attn_groups is None and time_scale_shift == "default":
        mid_attn_groups = norm_num_groups
    if add_attention and mid_attn_groups != norm_num_groups:
        raise unsupported(
            "attn_norm_num_groups",
            attn_norm_num_groups,
            f"the middle attention's GroupNorm must have norm_num_groups={norm_num_groups} groups "
            f"(with resnet_time_scale_shift={time_scale_shift!r})",
        )

    out_channels = config["out_channels"]
    if learned_variance:
        if out_channels % 2:
            raise unsupported("out_channels", out_channels, "learned_variance needs an even channel count [eps, v]")
        out_channels //= 2

    return {
        "sample_size": sample_size,
        "in_channels": config["in_channels"],
        "out_channels": out_channels,
        "model_channels": model_channels,
        "channel_mult": channel_mult,
        "layers_per_block": config["layers_per_block"],
        "attention_resolutions": attention_resolutions,
        "dropout": config.get("dropout", 0.0),
        "norm_num_groups": norm_num_groups,
        "norm_eps": config.get("norm_eps", 1e-5),
        "attention_head_dim": config.get("attention_head_dim"),
        "mid_block_attention": add_attention,
        "time_embedding_dim": config.get("time_embedding_dim"),
        "flip_sin_to_cos": config["flip_sin_to_cos"],
        "freq_shift": config["freq_shift"],
        "downsample_padding": config.get("downsample_padding", 1),
        "resnet_time_scale_shift": time_scale_shift,
        "learned_variance": learned_variance,
    }


# (pattern of a UNet2DModel key, its DDPMUNet2DModel name); `{up}` is replaced by the level of up block `k`
_KEY_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), r)
    for p, r in [
        (r"^conv_in\.(weight|bias)$", r"conv_in.\1"),
        (r"^time_embedding\.(linear_[12])\.(weight|bias)$", r"time_embedding.\1.\2"),
        (r"^conv_norm_out\.(weight|bias)$", r"norm_out.\1"),
        (r"^conv_out\.(weight|bias)$", r"conv_out.\1"),
        # ResNet blocks keep their inner names (norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut)
        (r"^down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(weight|bias)$", r"down_levels.\1.resnets.\2.\3.\4"),
        (r"^down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)$", r"down_levels.\1.resample.conv.\2"),
        (r"^up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(weight|bias)$", r"up_levels.{up}.resnets.\2.\3.\4"),
        (r"^up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)$", r"up_levels.{up}.resample.conv.\2"),
        (r"^mid_block\.resnets\.([01])\.(\w+)\.(weight|bias)$", r"mid_block.resnets.\1.\2.\3"),
        # attention: group_norm -> norm, to_out.0 -> to_out (to_out.1 is a parameter-free dropout)
        (
            r"^(down|up)_blocks\.(\d+)\.attentions\.(\d+)\.group_norm\.(weight|bias)$",
            r"\1_levels.{lvl}.attentions.\3.norm.\4",
        ),
        (
            r"^(down|up)_blocks\.(\d+)\.attentions\.(\d+)\.(to_[qkv])\.(weight|bias)$",
            r"\1_levels.{lvl}.attentions.\3.\4.\5",
        ),
        (
            r"^(down|up)_blocks\.(\d+)\.attentions\.(\d+)\.to_out\.0\.(weight|bias)$",
            r"\1_levels.{lvl}.attentions.\3.to_out.\4",
        ),
        (r"^mid_block\.attentions\.0\.group_norm\.(weight|bias)$", r"mid_block.attention.norm.\1"),
        (r"^mid_block\.attentions\.0\.(to_[qkv])\.(weight|bias)$", r"mid_block.attention.\1.\2"),
        (r"^mid_block\.attentions\.0\.to_out\.0\.(weight|bias)$", r"mid_block.attention.to_out.\1"),
    ]
]


def unet2d_key_to_ddpm_key(key: str, num_levels: int) -> str:
    """
    Maps one `UNet2DModel` state-dict key to the `DDPMUNet2DModel` key holding the same tensor.

    `up_blocks.k` (run k-th, from the lowest resolution) is `up_levels.{num_levels - 1 - k}`, since `up_levels` is
    indexed by resolution level (0 = full resolution).

    Raises:
        `KeyError`: when no rule accounts for `key`.
    """
    for pattern, replacement in _KEY_RULES:
        match = pattern.match(key)
        if match is None:
            continue
        new_key = match.expand(replacement)
        if "{up}" in new_key:
            new_key = new_key.replace("{up}", str(num_levels - 1 - int(match.group(1))))
        if "{lvl}" in new_key:
            block = int(match.group(2))
            new_key = new_key.replace("{lvl}", str(num_levels - 1 - block if match.group(1) == "up" else block))
        return new_key
    raise KeyError(key)


def unet2d_state_dict_to_ddpm(unet: UNet2DModel, learned_variance: bool = False) -> tuple[dict, dict]:
    """
    The `DDPMUNet2DModel` config and state dict of a `diffusers.UNet2DModel` in the DDPM layout; every weight of
    `unet.state_dict()` under a programmatically derived name. `DDPMUNet2DModel.from_diffusers_unet` builds the model
    from them and checks that every weight fits.

    Args:
        unet (`diffusers.UNet2DModel`): the source model, e.g. `UNet2DModel.from_pretrained("google/ddpm-cifar10-32")`.
        learned_variance (`bool`): the source predicts `[eps, v]` (ND (15)) in its `out_channels`.

    Returns:
        `(config, state_dict)`: the keyword arguments of `DDPMUNet2DModel(...)` and the renamed weights.

    Raises:
        `ValueError`: the source is not a `UNet2DModel`, its layout is not the DDPM one, or a weight has no
        counterpart.
    """
    if not isinstance(unet, UNet2DModel):
        raise ValueError(f"Expected a diffusers.UNet2DModel, got {type(unet).__name__}.")
    config = ddpm_config_from_unet2d_config(unet.config, learned_variance=learned_variance)
    num_levels = len(config["channel_mult"])
    converted: dict[str, torch.Tensor] = {}
    unused = []
    for key, tensor in unet.state_dict().items():
        try:
            new_key = unet2d_key_to_ddpm_key(key, num_levels)
        except KeyError:
            unused.append(key)
            continue
        if new_key in converted:
            raise ValueError(f"Two UNet2DModel weights map to {new_key!r} (the second is {key!r}).")
        converted[new_key] = tensor
    if unused:
        raise ValueError(f"UNet2DModel weights with no counterpart in DDPMUNet2DModel: {unused}.")
    return config, converted
