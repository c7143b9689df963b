"""Tests of the DDPM noise predictor `DDPMUNet2DModel` and its converter from `diffusers.UNet2DModel`."""

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

from ddpm_plugin.models import (
    DDPMUNet2DModel,
    convert_unet2d_to_ddpm,
    ddpm_config_from_unet2d_config,
    get_timestep_embedding,
    unet2d_key_to_ddpm_key,
)
from ddpm_plugin.models import unet_ddpm_2d as unet_module

# two levels (16 -> 8 px), attention at 8 px and in the middle block
TINY = {
    "sample_size": 16,
    "in_channels": 3,
    "model_channels": 16,
    "channel_mult": (1, 2),
    "layers_per_block": 1,
    "attention_resolutions": (8,),
    "norm_num_groups": 4,
}

# the layout of google/ddpm-cifar10-32, shrunk
DDPM_LAYOUT = {
    "sample_size": 16,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (32, 64, 64, 64),
    "layers_per_block": 2,
    "norm_num_groups": 8,
    "attention_head_dim": None,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
}


def tiny_unet(seed: int = 0, **overrides) -> DDPMUNet2DModel:
    torch.manual_seed(seed)
    return DDPMUNet2DModel(**{**TINY, **overrides}).eval()


def randomise_norms(model: torch.nn.Module, seed: int = 1) -> None:
    """GroupNorms start as the identity affine map; perturb them so that parity tests also cover their weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.2 * torch.randn(param.shape, generator=gen))


def sample(batch_size: int = 2, channels: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch_size, channels, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- shapes and timesteps


@pytest.mark.parametrize(
    "timestep",
    [0, 999, 17.5, torch.tensor(3), torch.tensor([3]), torch.tensor([3, 500, 999]), torch.tensor([1.5, 2.5, 3.5])],
    ids=["int0", "int999", "float", "0d", "1elem", "per_sample_long", "per_sample_float"],
)
def test_output_shape(timestep):
    unet = tiny_unet()
    with torch.no_grad():
        out = unet(sample(3), timestep)
    assert out.sample.shape == (3, 3, 16, 16)
    assert out.sample.dtype == torch.float32
    assert torch.isfinite(out.sample).all()


def test_return_tuple_matches_output():
    unet = tiny_unet()
    x = sample()
    with torch.no_grad():
        (tup,) = unet(x, 10, return_dict=False)
        assert torch.equal(tup, unet(x, 10).sample)


def test_other_sizes_and_out_channels():
    unet = tiny_unet(in_channels=1, out_channels=2)
    with torch.no_grad():
        out = unet(torch.randn(2, 1, 24, 32), 5).sample
    assert out.shape == (2, 2, 24, 32)


def test_per_sample_timesteps_act_per_sample():
    """Row i of a batch with timesteps (t_0, t_1) equals the output for sample i alone at t_i."""
    unet = tiny_unet()
    x = sample(2)
    with torch.no_grad():
        batched = unet(x, torch.tensor([10, 900])).sample
        first = unet(x[:1], 10).sample
        second = unet(x[1:], torch.tensor(900)).sample
        scalar = unet(x, 10).sample
    torch.testing.assert_close(batched[:1], first, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched[1:], second, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scalar[:1], first, rtol=1e-5, atol=1e-5)
    # the timestep matters
    assert (batched[1:] - scalar[1:]).abs().max() > 1e-3


def test_learned_variance_doubles_channels():
    unet = tiny_unet(learned_variance=True)
    with torch.no_grad():
        out = unet(sample(2), 7).sample
    assert out.shape == (2, 6, 16, 16)
    assert tiny_unet(learned_variance=True, out_channels=1).conv_out.out_channels == 2


def test_timestep_embedding_closed_form():
    """Ho et al.'s embedding: dim 4, freq_shift 1 -> frequencies (1, 1e-4), order [sin, cos]."""
    t = torch.tensor([0.0, 1.0, 250.0])
    emb = get_timestep_embedding(t, 4, flip_sin_to_cos=False, freq_shift=1)
    expected = torch.stack([torch.sin(t), torch.sin(t * 1e-4), torch.cos(t), torch.cos(t * 1e-4)], dim=1)
    torch.testing.assert_close(emb, expected)
    flipped = get_timestep_embedding(t, 4, flip_sin_to_cos=True, freq_shift=1)
    torch.testing.assert_close(flipped, expected[:, [2, 3, 0, 1]])
    assert get_timestep_embedding(t, 5).shape == (3, 5)
    assert get_timestep_embedding(t.half(), 4).dtype == torch.float32


def test_ho_cifar10_defaults():
    """The defaults are Ho et al.'s CIFAR-10 model: 35.7M parameters, attention at 16x16 and in the middle."""
    unet = DDPMUNet2DModel()
    assert sum(p.numel() for p in unet.parameters()) == 35_746_307
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 1) == 35.7
    assert [len(level.attentions) for level in unet.down_levels] == [0, 2, 0, 0]
    assert [len(level.attentions) for level in unet.up_levels] == [0, 3, 0, 0]
    assert [len(level.resnets) for level in unet.up_levels] == [3, 3, 3, 3]
    assert unet.mid_block.attention is not None


def test_attention_uses_sdpa(monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(args[0].shape)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(unet_module.F, "scaled_dot_product_attention", counting_sdpa)
    unet = tiny_unet(layers_per_block=2, attention_head_dim=8)
    with torch.no_grad():
        unet(sample(2), 3)
    # 2 down + 3 up at 8 px, 1 in the middle; 32 channels / head_dim 8 = 4 heads over 8 * 8 pixels
    assert len(calls) == 6
    assert all(shape == (2, 4, 64, 8) for shape in calls)


# ---------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_half_precision_close_to_fp32(dtype, tol):
    unet = tiny_unet()
    randomise_norms(unet)
    x = sample(2)
    t = torch.tensor([999, 3])
    with torch.no_grad():
        reference = unet(x, t).sample
        out = unet.to(dtype)(x.to(dtype), t).sample
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    rel = (out.float() - reference).abs().max() / reference.abs().max()
    assert rel < tol, f"{dtype}: relative max error {rel:.3g}"


# ---------------------------------------------------------------- training utilities


def test_gradient_checkpointing_same_gradients():
    x, t = sample(2), torch.tensor([10, 600])

    def grads(checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        unet = tiny_unet(dropout=0.1).train()
        if checkpointing:
            unet.enable_gradient_checkpointing()
            assert unet.is_gradient_checkpointing
        torch.manual_seed(123)  # same dropout masks (checkpointing replays the RNG state)
        out = unet(x, t).sample
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in unet.named_parameters()}

    out_plain, grads_plain = grads(False)
    out_ckpt, grads_ckpt = grads(True)
    torch.testing.assert_close(out_ckpt, out_plain, rtol=0, atol=1e-6)
    assert grads_plain.keys() == grads_ckpt.keys()
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], rtol=1e-5, atol=1e-6, msg=name)
    assert any(g.abs().max() > 0 for g in grads_plain.values())


def test_gradient_checkpointing_is_used():
    unet = tiny_unet().train()
    unet.enable_gradient_checkpointing()
    calls = []
    func = unet._gradient_checkpointing_func
    unet._gradient_checkpointing_func = lambda module, *args: (
        calls.append(type(module).__name__) or func(module, *args)
    )
    unet(sample(1), 5).sample.sum().backward()
    # 1 down + 2 up ResNets per level over 2 levels, 2 in the middle; attention 1 down + 2 up + 1 middle
    assert calls.count("DDPMResnetBlock2D") == 8
    assert calls.count("DDPMAttnBlock2D") == 4
    unet.disable_gradient_checkpointing()
    assert not unet.is_gradient_checkpointing


def test_determinism():
    x = sample(2)
    with torch.no_grad():
        a = tiny_unet(seed=3)(x, 42).sample
        b = tiny_unet(seed=3)(x, 42).sample
        c = tiny_unet(seed=4)(x, 42).sample
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_save_load_round_trip(tmp_path):
    unet = tiny_unet(learned_variance=True, attention_head_dim=8, downsample_padding=0)
    randomise_norms(unet)
    unet.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = DDPMUNet2DModel.from_pretrained(tmp_path).eval()

    def public(config):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if not k.startswith("_")}

    assert public(loaded.config) == public(unet.config)
    x = sample(2)
    with torch.no_grad():
        assert torch.equal(loaded(x, torch.tensor([1, 2])).sample, unet(x, torch.tensor([1, 2])).sample)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.randn(3, 16, 16), r"4-D tensor .*got \(3, 16, 16\)"),
        (torch.randn(2, 1, 16, 16), r"has 1 channels .*in_channels=3"),
        (torch.randn(2, 3, 16, 17), r"\(16, 17\) must be divisible by 2"),
    ],
)
def test_bad_sample_raises(x, match):
    with pytest.raises(ValueError, match=match):
        tiny_unet()(x, 1)


def test_bad_timestep_raises():
    with pytest.raises(ValueError, match=r"one value per sample \(2\), got 3"):
        tiny_unet()(sample(2), torch.tensor([1, 2, 3]))


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"model_channels": 18}, r"divisible by norm_num_groups=4.*gives 18"),
        ({"attention_resolutions": (4,)}, r"attention_resolutions entry 4 .*\[16, 8\]"),
        ({"sample_size": 15}, r"sample_size`=15 must be divisible by 2"),
        ({"resnet_time_scale_shift": "film"}, r"'default' or 'scale_shift', got 'film'"),
        ({"downsample_padding": 2}, r"0 or 1, got 2"),
        ({"channel_mult": ()}, r"at least one level"),
        ({"channel_mult": (1, 0)}, r"channel_mult entry .* got 0"),
        ({"dropout": 1.5}, r"\[0, 1\), got 1.5"),
        ({"attention_head_dim": 12}, r"attention_head_dim=12 must divide the channels \(32\)"),
        ({"in_channels": 0}, r"`in_channels` must be a positive integer, got 0"),
        ({"layers_per_block": 1.5}, r"`layers_per_block` must be a positive integer, got 1.5"),
    ],
)
def test_bad_config_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        DDPMUNet2DModel(**{**TINY, **overrides})


# ---------------------------------------------------------------- conversion from diffusers.UNet2DModel


def diffusers_unet(seed: int = 0, **overrides) -> UNet2DModel:
    torch.manual_seed(seed)
    unet = UNet2DModel(**{**DDPM_LAYOUT, **overrides}).eval()
    randomise_norms(unet, seed)
    return unet


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        # the published google/ddpm-* configs: TensorFlow "SAME" downsampling and GroupNorm eps 1e-6
        {"downsample_padding": 0, "norm_eps": 1e-6},
        {"attention_head_dim": 16, "flip_sin_to_cos": True, "freq_shift": 0, "dropout": 0.1, "layers_per_block": 1},
        {"resnet_time_scale_shift": "scale_shift", "attn_norm_num_groups": 8, "add_attention": False},
        {"sample_size": 32, "time_embedding_dim": 64, "in_channels": 1, "out_channels": 1},
    ],
    ids=["ddpm", "ddpm_published", "heads_flip", "scale_shift", "other_sizes"],
)
def test_converter_parity(overrides):
    reference = diffusers_unet(**overrides)
    converted = DDPMUNet2DModel.from_diffusers_unet(reference)
    size, channels = reference.config.sample_size, reference.config.in_channels
    x = sample(3, channels=channels, size=size)
    t = torch.tensor([0, 371, 999])
    with torch.no_grad():
        expected = reference(x, t).sample
        out = converted(x, t).sample
    max_diff = (out - expected).abs().max().item()
    assert max_diff <= 1e-5, f"max abs diff {max_diff:.3g}"
    assert expected.abs().max() > 0.1  # not a trivially small output
    # every weight of the source is used, none is invented
    assert sum(p.numel() for p in converted.parameters()) == sum(p.numel() for p in reference.parameters())


def test_converter_config_of_published_layout():
    config = ddpm_config_from_unet2d_config(
        {**DDPM_LAYOUT, "block_out_channels": (128, 256, 256, 256), "norm_num_groups": 32, "sample_size": 32}
    )
    assert config["model_channels"] == 128
    assert config["channel_mult"] == (1, 2, 2, 2)
    assert config["attention_resolutions"] == (16,)
    assert config["mid_block_attention"] is True
    assert {k: v for k, v in config.items() if k in TINY} == {
        k: v for k, v in DDPMUNet2DModel().config.items() if k in TINY
    }


def test_converter_copies_weights():
    reference = diffusers_unet()
    converted = convert_unet2d_to_ddpm(reference)
    torch.testing.assert_close(
        converted.up_levels[1].attentions[2].to_q.weight,
        reference.up_blocks[2].attentions[2].to_q.weight,
        rtol=0,
        atol=0,
    )
    torch.testing.assert_close(converted.norm_out.bias, reference.conv_norm_out.bias, rtol=0, atol=0)
    # a copy, not shared storage
    assert converted.conv_in.weight.data_ptr() != reference.conv_in.weight.data_ptr()


def test_converter_learned_variance():
    reference = diffusers_unet(out_channels=6)
    converted = DDPMUNet2DModel.from_diffusers_unet(reference, learned_variance=True)
    assert converted.config.out_channels == 3 and converted.config.learned_variance
    x = sample(2)
    with torch.no_grad():
        torch.testing.assert_close(converted(x, 5).sample, reference(x, 5).sample, rtol=0, atol=1e-5)


def test_converter_keeps_dtype():
    reference = diffusers_unet().to(torch.bfloat16)
    converted = convert_unet2d_to_ddpm(reference)
    assert converted.dtype == torch.bfloat16
    assert torch.equal(converted.conv_out.weight, reference.conv_out.weight)


def test_key_mapping():
    assert unet2d_key_to_ddpm_key("up_blocks.0.resnets.2.conv_shortcut.weight", 4) == (
        "up_levels.3.resnets.2.conv_shortcut.weight"
    )
    assert (
        unet2d_key_to_ddpm_key("up_blocks.2.attentions.1.to_out.0.bias", 4) == "up_levels.1.attentions.1.to_out.bias"
    )
    assert unet2d_key_to_ddpm_key("down_blocks.1.attentions.0.group_norm.weight", 4) == (
        "down_levels.1.attentions.0.norm.weight"
    )
    assert unet2d_key_to_ddpm_key("mid_block.attentions.0.to_k.weight", 4) == "mid_block.attention.to_k.weight"
    with pytest.raises(KeyError):
        unet2d_key_to_ddpm_key("class_embedding.weight", 4)


def test_converter_rejects_leftover_weights():
    reference = diffusers_unet()
    reference.register_buffer("extra_scale", torch.ones(1))
    with pytest.raises(ValueError, match=r"no counterpart in DDPMUNet2DModel: \['extra_scale'\]"):
        convert_unet2d_to_ddpm(reference)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            {"up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D")},
            r"same resolutions on the down and the up path",
        ),
        ({"num_class_embeds": 10}, r"unsupported num_class_embeds=10"),
        ({"downsample_type": "resnet"}, r"unsupported downsample_type='resnet'"),
        ({"time_embedding_type": "fourier"}, r"unsupported time_embedding_type='fourier'"),
        ({"mid_block_scale_factor": 2.0}, r"unsupported mid_block_scale_factor=2.0"),
        (
            {"down_block_types": ("DownBlock2D", "SkipDownBlock2D", "DownBlock2D", "DownBlock2D")},
            r"unsupported down_block_types=.*found \['SkipDownBlock2D'\]",
        ),
        ({"block_out_channels": (32, 48, 64, 64)}, r"multiple of the first \(32\)"),
        ({"resnet_time_scale_shift": "scale_shift"}, r"unsupported attn_norm_num_groups=None"),
    ],
)
def test_converter_rejects_other_layouts(overrides, match):
    config = {**DDPM_LAYOUT, **overrides}
    with pytest.raises(ValueError, match=match):
        ddpm_config_from_unet2d_config(config)


def test_converter_rejects_other_models():
    with pytest.raises(ValueError, match=r"Expected a diffusers.UNet2DModel, got Linear"):
        convert_unet2d_to_ddpm(torch.nn.Linear(2, 2))


def test_math_sanity_of_tiny_config():
    # 16 px and two levels -> attention exactly at the second level
    unet = tiny_unet()
    assert [len(level.attentions) for level in unet.down_levels] == [0, 1]
    assert unet.num_levels == 2
    assert math.isclose(unet.config.freq_shift, 1.0)
