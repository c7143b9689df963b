"""`load_default_pipeline`: offline loading of the bundled pipelines, and clear errors for every way it can fail."""

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

import ddpm_plugin.pretrained as pretrained
from ddpm_plugin import (
    DDPMUNet2DModel,
    GaussianDDPMScheduler,
    LatentDDPMPipeline,
    PixelDDPMPipeline,
    load_default_pipeline,
)


def _pixel_pipeline(steps: int = 8) -> PixelDDPMPipeline:
    torch.manual_seed(0)
    unet = DDPMUNet2DModel(
        sample_size=8, in_channels=1, model_channels=8, channel_mult=(1,), norm_num_groups=4, attention_resolutions=()
    )
    return PixelDDPMPipeline(
        unet=unet, scheduler=GaussianDDPMScheduler(num_train_timesteps=steps), default_num_inference_steps=steps
    )


def _latent_pipeline(steps: int = 8) -> LatentDDPMPipeline:
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=2,
        norm_num_groups=4,
        sample_size=16,
    )
    unet = DDPMUNet2DModel(
        sample_size=8, in_channels=2, model_channels=8, channel_mult=(1,), norm_num_groups=4, attention_resolutions=()
    )
    return LatentDDPMPipeline(
        vae=vae,
        unet=unet,
        scheduler=GaussianDDPMScheduler(num_train_timesteps=steps),
        default_num_inference_steps=steps,
    )


@pytest.fixture(scope="module")
def bundled_root(tmp_path_factory):
    """A stand-in for `ddpm_plugin/pretrained/`: tiny untrained pixel and latent pipelines, saved."""
    root = tmp_path_factory.mktemp("pretrained")
    _pixel_pipeline().save_pretrained(root / "mnist-pixel")
    _latent_pipeline().save_pretrained(root / "mnist-latent")
    return root


def _images(pipe) -> np.ndarray:
    return pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="np").images


def _copy(root, tmp_path):
    import shutil

    target = tmp_path / "root"
    shutil.copytree(root, target)
    return target


@pytest.mark.parametrize("kind, cls", [("pixel", PixelDDPMPipeline), ("latent", LatentDDPMPipeline)])
def test_loads_bundled_folder_offline_and_samples_like_the_saved_pipeline(bundled_root, kind, cls, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = load_default_pipeline(kind, root=bundled_root)
    assert type(pipe) is cls
    assert pipe.config.default_num_inference_steps == 8
    reference = (_pixel_pipeline if kind == "pixel" else _latent_pipeline)()
    np.testing.assert_allclose(_images(pipe), _images(reference), atol=1e-6)


def test_default_root_is_the_module_level_pretrained_dir(bundled_root, monkeypatch):
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", bundled_root)
    assert type(load_default_pipeline("pixel")) is PixelDDPMPipeline
    assert type(load_default_pipeline()) is LatentDDPMPipeline  # "latent" is the default kind


def test_dtype_and_device_keywords(bundled_root):
    pipe = load_default_pipeline("pixel", root=bundled_root, torch_dtype=torch.float64, device="cpu")
    assert pipe.unet.dtype == torch.float64
    assert pipe.device.type == "cpu"


def test_unknown_kind_lists_the_kinds():
    with pytest.raises(ValueError, match=r"unknown kind='cifar'.*\['latent', 'pixel'\]"):
        load_default_pipeline("cifar")


def test_missing_bundled_model_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="bundled pixel model is not present") as info:
        load_default_pipeline("pixel", root=tmp_path)
    assert str(tmp_path / "mnist-pixel") in str(info.value)
    (tmp_path / "mnist-latent").mkdir()  # a folder without model_index.json is not a model either
    with pytest.raises(FileNotFoundError, match="has no model_index.json"):
        load_default_pipeline("latent", root=tmp_path)


def test_truncated_weights_name_the_file(bundled_root, tmp_path):
    root = _copy(bundled_root, tmp_path)
    weights = root / "mnist-pixel" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(OSError, match="truncated or corrupted safetensors") as info:
        load_default_pipeline("pixel", root=root)
    assert str(weights) in str(info.value)


def test_corrupted_safetensors_header_names_the_file(bundled_root, tmp_path):
    root = _copy(bundled_root, tmp_path)
    weights = root / "mnist-latent" / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:16] = b"\x00garbage"  # inside the JSON header
    weights.write_bytes(bytes(data))
    with pytest.raises(OSError, match="damaged") as info:
        load_default_pipeline("latent", root=root)
    assert str(weights) in str(info.value)


@pytest.mark.parametrize("name", ["model_index.json", "unet/config.json", "scheduler/scheduler_config.json"])
def test_damaged_json_names_the_file(bundled_root, tmp_path, name):
    root = _copy(bundled_root, tmp_path)
    path = root / "mnist-pixel" / name
    path.write_text(path.read_text()[:-20])
    with pytest.raises(OSError, match="not valid JSON") as info:
        load_default_pipeline("pixel", root=root)
    assert str(path) in str(info.value)


def test_checksum_manifest_catches_damage_inside_tensor_data(bundled_root, tmp_path):
    root = _copy(bundled_root, tmp_path)
    folder = root / "mnist-pixel"
    manifest = pretrained.write_checksums(folder)
    assert len(manifest.read_text().splitlines()) == 4  # model_index, scheduler config, unet config + weights
    load_default_pipeline("pixel", root=root)  # intact: loads
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # a flipped byte in the last tensor: the header is intact
    weights.write_bytes(bytes(data))
    with pytest.raises(OSError, match="SHA-256 does not match") as info:
        load_default_pipeline("pixel", root=root)
    assert str(weights) in str(info.value)


def test_wrong_pipeline_class_in_bundled_folder(bundled_root, tmp_path):
    root = _copy(bundled_root, tmp_path)
    index = root / "mnist-latent" / "model_index.json"
    index.write_text((root / "mnist-pixel" / "model_index.json").read_text())
    with pytest.raises(OSError, match="'PixelDDPMPipeline', expected 'LatentDDPMPipeline'"):
        load_default_pipeline("latent", root=root)


def test_save_for_hub_folder_loads_with_installed_classes(tmp_path):
    """A `save_for_hub` folder names its copied module files; the installed classes load it, no remote code."""
    from ddpm_plugin import save_for_hub

    pipe = _pixel_pipeline()
    save_for_hub(pipe, tmp_path / "mnist-pixel", sample_grid=False)
    assert isinstance(json.loads((tmp_path / "mnist-pixel" / "model_index.json").read_text())["_class_name"], list)
    loaded = load_default_pipeline("pixel", root=tmp_path)
    assert type(loaded) is PixelDDPMPipeline and type(loaded.unet) is DDPMUNet2DModel
    np.testing.assert_allclose(_images(loaded), _images(pipe), atol=1e-6)
