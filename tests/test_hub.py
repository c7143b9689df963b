"""Hub sharing: save_for_hub (self-contained repository, model card, sample grid, remote code loading without
ddpm_plugin), push_to_hub (mocked HfApi), loading by Hub id from an offline Hub cache, the README snippet."""

import json
import math
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler
from huggingface_hub import HfApi, ModelCard, RepoUrl
from PIL import Image

import ddpm_plugin
from ddpm_plugin import (
    DDPMUNet2DModel,
    GaussianDDPMScheduler,
    LatentDDPMPipeline,
    PixelDDPMPipeline,
    push_to_hub,
    save_for_hub,
)
from ddpm_plugin import hub as hub_module

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(ddpm_plugin.__file__).resolve().parent
T = 50  # training timesteps (the README snippet samples 50 DDIM steps)

# prepended to subprocess code: makes `import ddpm_plugin` fail, as where it is not installed
BLOCK_DDPM_PLUGIN = textwrap.dedent(
    """
    import importlib.abc, sys

    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "ddpm_plugin" or name.startswith("ddpm_plugin."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")

    sys.meta_path.insert(0, _Block())
    try:
        import ddpm_plugin
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("ddpm_plugin is importable")
    """
)


def tiny_unet(in_channels: int = 1) -> DDPMUNet2DModel:
    torch.manual_seed(0)
    return DDPMUNet2DModel(
        sample_size=8,
        in_channels=in_channels,
        model_channels=8,
        channel_mult=(1, 2),
        layers_per_block=1,
        attention_resolutions=(4,),
        norm_num_groups=4,
    ).eval()


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(1)
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
    vae.register_to_config(scaling_factor=0.9)
    return vae.eval()


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def pixel_pipe() -> PixelDDPMPipeline:
    return quiet(PixelDDPMPipeline(tiny_unet(), GaussianDDPMScheduler(num_train_timesteps=T), 5))


@pytest.fixture
def latent_pipe() -> LatentDDPMPipeline:
    return quiet(LatentDDPMPipeline(tiny_vae(), tiny_unet(2), GaussianDDPMScheduler(num_train_timesteps=T), 4))


def sample(pipe, seed: int = 3) -> np.ndarray:
    return pipe(batch_size=2, generator=torch.Generator().manual_seed(seed), output_type="np").images


def run_python(code: str, tmp_path: Path, **env) -> str:
    """Runs `code` in a fresh interpreter, offline, with its own remote-code module cache; returns stdout."""
    full_env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_MODULES_CACHE=str(tmp_path / "hf_modules"),
        PYTHONNOUSERSITE="1",
        TQDM_DISABLE="1",
        OMP_NUM_THREADS="1",
        **env,
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, cwd=tmp_path, timeout=1500
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


# ---------------------------------------------------------------------------------------------------- save_for_hub
def test_save_for_hub_layout_and_code(pixel_pipe, tmp_path):
    folder = save_for_hub(pixel_pipe, tmp_path / "repo", sample_grid=False)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "model_index.json",
        "pipeline_ddpm_base.py",
        "pipeline_pixel_ddpm.py",
        "preview.py",
        "samplers.py",
        "scheduler/scheduler_config.json",
        "scheduler/scheduling_gaussian_ddpm.py",
        "unet/config.json",
        "unet/convert.py",  # imported (lazily) by unet_ddpm_2d.py, so diffusers copies it too
        "unet/diffusion_pytorch_model.safetensors",
        "unet/unet_ddpm_2d.py",
    ]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_pixel_ddpm", "PixelDDPMPipeline"]
    assert index["unet"] == ["unet_ddpm_2d", "DDPMUNet2DModel"]
    assert index["scheduler"] == ["scheduling_gaussian_ddpm", "GaussianDDPMScheduler"]
    assert index["default_num_inference_steps"] == 5
    # one source of truth: the copies are the package's files, byte for byte
    sources = {
        "pipeline_pixel_ddpm.py": PACKAGE / "pipelines" / "pipeline_pixel_ddpm.py",
        "pipeline_ddpm_base.py": PACKAGE / "pipelines" / "pipeline_ddpm_base.py",
        "preview.py": PACKAGE / "pipelines" / "preview.py",
        "samplers.py": PACKAGE / "pipelines" / "samplers.py",
        "unet/unet_ddpm_2d.py": PACKAGE / "models" / "unet_ddpm_2d.py",
        "unet/convert.py": PACKAGE / "models" / "convert.py",
        "scheduler/scheduling_gaussian_ddpm.py": PACKAGE / "schedulers" / "scheduling_gaussian_ddpm.py",
    }
    for copy, source in sources.items():
        assert (folder / copy).read_bytes() == source.read_bytes(), copy


def test_save_for_hub_latent_keeps_diffusers_vae(latent_pipe, tmp_path):
    folder = save_for_hub(latent_pipe, tmp_path / "repo", sample_grid=False)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_latent_ddpm", "LatentDDPMPipeline"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert (folder / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(folder.rglob("*.bin"))


def test_model_card(pixel_pipe, tmp_path):
    folder = save_for_hub(
        pixel_pipe,
        tmp_path / "repo",
        repo_id="org/ddpm-tiny",
        datasets="ylecun/mnist",
        metrics={"bits_per_dim": 1.9, "fid": 12.25},
        training_command="ddpm-train --dataset ylecun/mnist --epochs 3",
        tags=["mnist"],
        grid_rows=2,
        grid_cols=3,
    )
    card = ModelCard.load(folder / "README.md")
    data = card.data
    assert data.library_name == "diffusers"
    assert data.pipeline_tag == "unconditional-image-generation"
    assert data.tags == ["unconditional-image-generation", "ddpm_plugin", "diffusers", "mnist"]
    assert data.datasets == ["ylecun/mnist"]
    assert data.license == "apache-2.0"
    results = {r.metric_type: r.metric_value for r in data.eval_results}
    assert results == {"bits_per_dim": 1.9, "fid": 12.25}
    assert all(r.dataset_type == "ylecun/mnist" for r in data.eval_results)
    text = card.text
    assert "| bits_per_dim | 1.9 |" in text and "| fid | 12.25 |" in text
    assert "ddpm-train --dataset ylecun/mnist --epochs 3" in text
    assert 'DiffusionPipeline.from_pretrained("org/ddpm-tiny", trust_remote_code=True)' in text
    assert "![samples](samples.png)" in text


def test_sample_grid_is_the_seeded_samples(pixel_pipe, tmp_path):
    folder = save_for_hub(pixel_pipe, tmp_path / "repo", grid_rows=2, grid_cols=3, grid_seed=7)
    grid = np.asarray(Image.open(folder / "samples.png"))
    assert grid.shape == (2 * 8, 3 * 8)
    for i in range(6):
        image = pixel_pipe(generator=torch.Generator().manual_seed(7 + i), output_type="np").images[0, ..., 0]
        row, col = divmod(i, 3)
        tile = grid[row * 8 : (row + 1) * 8, col * 8 : (col + 1) * 8]
        np.testing.assert_allclose(tile, (image * 255).round(), atol=1)
    assert not (save_for_hub(pixel_pipe, tmp_path / "nogrid", sample_grid=False) / "samples.png").exists()


def test_save_for_hub_rejects_bad_input(pixel_pipe, tmp_path):
    with pytest.raises(ValueError, match=r"metrics\['bpd'\]=nan"):
        save_for_hub(pixel_pipe, tmp_path / "a", metrics={"bpd": math.nan}, sample_grid=False)

    class Foreign(GaussianDDPMScheduler):
        pass

    Foreign.__module__ = "somewhere_else"
    pixel_pipe.scheduler = Foreign(num_train_timesteps=T)
    with pytest.raises(ValueError, match="somewhere_else.Foreign"):
        save_for_hub(pixel_pipe, tmp_path / "b", sample_grid=False)
    assert not (tmp_path / "b" / "model_index.json").exists()  # checked before writing


def test_copied_code_may_not_import_ddpm_plugin(tmp_path):
    module_file = tmp_path / "bad_module.py"
    module_file.write_text("import torch\nfrom ddpm_plugin.losses import simple_loss\n")
    module = types.ModuleType("bad_module")
    module.__file__ = str(module_file)
    with pytest.raises(ValueError, match=r"imports \['ddpm_plugin'\]"):
        hub_module._copy_module(module, tmp_path / "out", direct_only=False)
    module_file.write_text("from .helper import thing\n")
    (tmp_path / "helper.py").write_text("from .other import x\n")
    (tmp_path / "other.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="copies only the direct relative imports"):
        hub_module._copy_module(module, tmp_path / "out", direct_only=True)


# ---------------------------------------------------------------------------------------------------- remote code
def test_trust_remote_code_load_without_ddpm_plugin(pixel_pipe, latent_pipe, tmp_path):
    """A fresh interpreter in which `import ddpm_plugin` fails loads both repositories and samples the same images."""
    folders = {}
    for kind, pipe in (("pixel", pixel_pipe), ("latent", latent_pipe)):
        folders[kind] = save_for_hub(pipe, tmp_path / kind, sample_grid=False)
        np.save(tmp_path / f"{kind}.npy", sample(pipe))
    code = BLOCK_DDPM_PLUGIN + textwrap.dedent(
        f"""
        import numpy as np, torch
        from diffusers import DiffusionPipeline

        for kind, folder in {{"pixel": {str(folders["pixel"])!r}, "latent": {str(folders["latent"])!r}}}.items():
            try:
                DiffusionPipeline.from_pretrained(folder)
            except ValueError as e:
                assert "trust_remote_code" in str(e), e
            else:
                raise SystemExit("loaded remote code without trust_remote_code=True")
            pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
            pipe.set_progress_bar_config(disable=True)
            images = pipe(batch_size=2, generator=torch.Generator().manual_seed(3), output_type="np").images
            diff = np.abs(images - np.load(f"{{kind}}.npy")).max()
            previews = list(pipe.iter_previews(num_inference_steps=4, preview_every=2, output_type="np"))
            print(kind, type(pipe).__module__, type(pipe).__name__, type(pipe.unet).__module__, diff, len(previews))
        print("ddpm_plugin imported:", any(m.startswith("ddpm_plugin") for m in sys.modules))
        """
    )
    out = run_python(code, tmp_path).splitlines()
    pixel, latent, imported = out[-3].split(), out[-2].split(), out[-1]
    assert pixel[:4] == [
        "pixel",
        "diffusers_modules.local.pipeline_pixel_ddpm",
        "PixelDDPMPipeline",
        "diffusers_modules.local.unet_ddpm_2d",
    ]
    assert latent[:3] == ["latent", "diffusers_modules.local.pipeline_latent_ddpm", "LatentDDPMPipeline"]
    assert float(pixel[4]) == 0.0 and float(latent[4]) == 0.0  # identical images
    assert pixel[5] == latent[5] == "2"
    assert imported == "ddpm_plugin imported: False"


# ---------------------------------------------------------------------------------------------------- push_to_hub
def mocked_hf_api():
    """`HfApi` replaced by an autospec'd mock: a call that no longer fits HfApi's signature fails the test."""
    return mock.patch.object(hub_module, "HfApi", mock.create_autospec(HfApi))


def test_push_to_hub_mocked(pixel_pipe):
    seen = {}

    def upload_folder(**kwargs):
        folder = Path(kwargs["folder_path"])
        seen["files"] = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        seen["card"] = (folder / "README.md").read_text()
        return mock.DEFAULT  # the autospec'd return value

    with mocked_hf_api() as api_cls:
        api = api_cls.return_value
        # the Hub may canonicalise the id (here its case): the upload goes to the repository create_repo returned
        api.create_repo.return_value = RepoUrl("https://huggingface.co/Org/Tiny")
        api.upload_folder.side_effect = upload_folder
        result = push_to_hub(
            pixel_pipe,
            "org/tiny",
            private=True,
            token="hf_test",
            commit_message="first model",
            metrics={"bits_per_dim": 2.5},
            grid_rows=1,
            grid_cols=2,
        )
    assert result is api.upload_folder.return_value  # the upload's commit info is handed back
    api_cls.assert_called_once_with(token="hf_test")
    api.create_repo.assert_called_once_with(repo_id="org/tiny", private=True, exist_ok=True, repo_type="model")
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["repo_id"] == "Org/Tiny" and kwargs["repo_type"] == "model"
    assert kwargs["commit_message"] == "first model" and kwargs["create_pr"] is False
    assert not Path(kwargs["folder_path"]).exists()  # the temporary folder is cleaned up
    assert {"model_index.json", "samples.png", "README.md", "unet/diffusion_pytorch_model.safetensors"} <= set(
        seen["files"]
    )
    assert "| bits_per_dim | 2.5 |" in seen["card"] and '"org/tiny"' in seen["card"]


@pytest.mark.parametrize("repo_id", ["tiny", "a/b/c", "/tiny", ""])
def test_push_to_hub_bad_repo_id(pixel_pipe, repo_id):
    with mocked_hf_api() as api_cls, pytest.raises(ValueError, match="user_or_org/name"):
        push_to_hub(pixel_pipe, repo_id)
    api_cls.return_value.create_repo.assert_not_called()


# ---------------------------------------------------------------------------------------------------- Hub cache
def lay_into_hub_cache(cache: Path, repo_id: str, save) -> None:
    """The standard Hub cache layout: models--org--name/snapshots/<rev>/..., refs/main holding <rev>."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    save(repo_dir / "snapshots" / revision)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)


def test_load_by_hub_id_offline_and_readme_snippet(pixel_pipe, latent_pipe, tmp_path):
    """A fresh interpreter: `import ddpm_plugin`, then load by Hub id from the cache with HF_HUB_OFFLINE=1."""
    cache = tmp_path / "hub"
    lay_into_hub_cache(cache, "org/pixel", pixel_pipe.save_pretrained)
    lay_into_hub_cache(cache, "org/latent", latent_pipe.save_pretrained)
    lay_into_hub_cache(cache, "your-name/ddpm-mnist", pixel_pipe.save_pretrained)  # the README snippet's id
    np.save(tmp_path / "pixel.npy", sample(pixel_pipe))
    np.save(tmp_path / "latent.npy", sample(latent_pipe))
    pixel_pipe.scheduler = DDIMScheduler.from_config(pixel_pipe.scheduler.config)
    ddim_images = pixel_pipe(batch_size=4, generator=torch.Generator().manual_seed(0), num_inference_steps=50).images
    np.save(tmp_path / "snippet.npy", np.stack([np.asarray(im) for im in ddim_images]))
    snippet = REPO_ROOT / "docs" / "use_from_diffusers.py"
    code = textwrap.dedent(
        f"""
        import runpy
        import numpy as np, torch
        import ddpm_plugin
        from diffusers import DiffusionPipeline
        from ddpm_plugin import LatentDDPMPipeline, PixelDDPMPipeline

        for kind, cls in (("pixel", PixelDDPMPipeline), ("latent", LatentDDPMPipeline)):
            for loader in (cls, DiffusionPipeline):
                pipe = loader.from_pretrained(f"org/{{kind}}")
                pipe.set_progress_bar_config(disable=True)
                images = pipe(batch_size=2, generator=torch.Generator().manual_seed(3), output_type="np").images
                print(kind, loader.__name__, type(pipe).__name__, np.abs(images - np.load(f"{{kind}}.npy")).max())
        torch.manual_seed(0)  # the snippet draws from the global generator
        scope = runpy.run_path({str(snippet)!r})
        images, pipe = scope["images"], scope["pipe"]
        diff = np.abs(np.stack([np.asarray(im) for im in images]).astype(int) - np.load("snippet.npy")).max()
        print("snippet", type(pipe).__name__, type(pipe.scheduler).__name__, len(images), images[0].size, diff)
        """
    )
    out = run_python(code, tmp_path, HF_HUB_CACHE=str(cache)).splitlines()
    assert out[-5:-1] == [
        "pixel PixelDDPMPipeline PixelDDPMPipeline 0.0",
        "pixel DiffusionPipeline PixelDDPMPipeline 0.0",
        "latent LatentDDPMPipeline LatentDDPMPipeline 0.0",
        "latent DiffusionPipeline LatentDDPMPipeline 0.0",
    ]
    assert out[-1] == "snippet PixelDDPMPipeline DDIMScheduler 4 (8, 8) 0"  # DDIM (eta = 0) from x_T of seed 0


def test_readme_snippet_is_five_lines_of_code():
    lines = [ln for ln in (REPO_ROOT / "docs" / "use_from_diffusers.py").read_text().splitlines() if ln.strip()]
    assert len(lines) == 5
    assert any("import ddpm_plugin" in ln for ln in lines)
    assert any("DDIMScheduler.from_config(pipe.scheduler.config)" in ln for ln in lines)
