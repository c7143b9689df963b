"""Tests of the training module: every stage end to end on tiny configs, fine-tuning, exact resume, kill during a
checkpoint save, NaN stop, bad data, the CLI and config files. Multi-process runs are in test_training_distributed.py."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_or_skip
from PIL import Image
from safetensors.torch import load_file

from training.checkpoint import CHECKPOINT_MARKER, DEBUG_KILL_ENV, list_checkpoints
from training.config import TrainingConfig, build_parser, config_from_dict, load_config_file, parse_args
from training.data import mnist_split
from training.loop import NonFiniteLossError, train

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training" / "configs"


def tiny_values(output_dir: Path, **overrides) -> dict:
    """A few-second run: a 2-level UNet with 8 channels on 32 MNIST digits, T = 50."""
    values = {
        "output_dir": str(output_dir),
        "max_train_samples": 32,
        "train_batch_size": 8,
        "max_train_steps": 4,
        "model_channels": 8,
        "norm_num_groups": 4,
        "channel_mult": [1, 2],
        "attention_resolutions": [14],
        "layers_per_block": 1,
        "dropout": 0.0,
        "num_train_timesteps": 50,
        "default_num_inference_steps": 3,
        "learning_rate": 1e-3,
        "lr_warmup_steps": 0,
        "logging_steps": 1,
        "checkpointing_steps": 0,
        "sample_steps": 0,
        "eval_steps": 0,
        "final_eval_num_images": 0,
        "card_grid_inference_steps": 2,
        "report_to": "none",
        "progress_bar": False,
        "vae_block_out_channels": [8, 8, 8],
        "vae_norm_num_groups": 4,
        "latent_scale_samples": 32,
    }
    values.update(overrides)
    return values


def tiny(output_dir: Path, **overrides) -> TrainingConfig:
    return config_from_dict(tiny_values(output_dir, **overrides)).validate()


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each in-process run gets its own accelerate singletons (and deterministic mode is switched back off)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    torch.use_deterministic_algorithms(False)


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def checkpoint_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Model weights and EMA shadow parameters of a checkpoint folder."""
    tensors = dict(load_file(checkpoint / "model.safetensors"))
    ema = torch.load(checkpoint / "custom_checkpoint_0.pkl", weights_only=False)
    for i, p in enumerate(ema["shadow_params"]):
        tensors[f"ema.{i}"] = p
    return tensors


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs (max |diff| {(a[key] - b[key]).abs().max()})"


# ---------------------------------------------------------------------------------------------------- data
def test_mnist_split_is_stratified_disjoint_and_fixed():
    train_x, train_y, held_x, held_y = mnist_split(seed=0)
    assert train_x.shape == (4500, 28, 28) and held_x.shape == (500, 28, 28)
    assert train_x.dtype == np.uint8 and held_x.dtype == np.uint8
    assert np.array_equal(np.bincount(held_y, minlength=10), np.full(10, 50))
    assert np.array_equal(np.bincount(train_y, minlength=10), np.full(10, 450))
    # disjoint: no held-out digit appears among the training digits
    train_rows = {row.tobytes() for row in train_x.reshape(4500, -1)}
    assert not any(row.tobytes() in train_rows for row in held_x.reshape(500, -1))
    again = mnist_split(seed=0)
    assert np.array_equal(again[2], held_x)
    assert not np.array_equal(mnist_split(seed=1)[2], held_x)


# ---------------------------------------------------------------------------------------------------- config / CLI
def test_help_documents_every_field():
    result = run_cli("--help", timeout=120)
    assert result.returncode == 0, result.stderr
    for name in TrainingConfig.__dataclass_fields__:
        assert f"--{name}" in result.stdout, name
    assert "--config" in result.stdout
    assert "Image channels: 1 (grayscale) or 3 (RGB)" in result.stdout


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_config_file_then_cli_override(tmp_path, suffix):
    values = {"stage": "vae", "learning_rate": "1e-3", "vae_block_out_channels": [16, 32], "random_flip": True}
    path = tmp_path / f"run.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps(values))
    else:
        import yaml

        path.write_text(yaml.safe_dump(values))
    config = parse_args(["--config", str(path), "--learning_rate", "5e-4", "--no-random_flip", "--seed", "7"])
    assert config.stage == "vae"
    assert config.vae_block_out_channels == [16, 32]  # from the file
    assert config.learning_rate == 5e-4  # the flag wins over the file
    assert config.random_flip is False
    assert config.seed == 7
    assert config.train_batch_size == TrainingConfig().train_batch_size  # untouched default
    assert parse_args(["--config", str(path)]).learning_rate == 1e-3


def test_cli_flag_forms():
    """Booleans as --flag / --no-flag, optional values as 'none', lists with several values or none."""
    config = parse_args(
        ["--no-center_crop", "--random_flip", "--no-progress_bar", "--max_grad_norm", "none", "--snr_gamma", "5",
         "--channel_mult", "1", "2", "--attention_resolutions", "--resume", "latest"]
    )  # fmt: skip
    assert (config.center_crop, config.random_flip, config.progress_bar) == (False, True, False)
    assert config.max_grad_norm is None and config.snr_gamma == 5.0
    assert config.channel_mult == [1, 2] and config.attention_resolutions == []
    assert config.resume == "latest"
    assert parse_args(["--stage", "vae", "--no-random_flip"]).random_flip is False
    defaults = parse_args([])
    assert defaults == TrainingConfig() and defaults.max_grad_norm == 1.0
    with pytest.raises(SystemExit):  # not one of the choices
        parse_args(["--stage", "gan"])


def test_config_errors_name_the_bad_value(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("learning_rat: 0.1\n")
    with pytest.raises(ValueError, match="learning_rat"):
        parse_args(["--config", str(path)])
    with pytest.raises(ValueError, match="prediction_type='noise'"):
        parse_args(["--prediction_type", "noise"])
    with pytest.raises(ValueError, match="mixed_precision='fp8'"):
        parse_args(["--mixed_precision", "fp8"])
    with pytest.raises(ValueError, match="loss_type='hybrid'"):
        parse_args(["--loss_type", "hybrid"])
    with pytest.raises(ValueError, match="channels=2"):
        parse_args(["--channels", "2"])
    with pytest.raises(ValueError, match="train_batch_size must be a positive"):
        parse_args(["--train_batch_size", "0"])
    with pytest.raises(ValueError, match="vae_path"):
        parse_args(["--latent"])
    with pytest.raises(FileNotFoundError):
        parse_args(["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(SystemExit):  # argparse: not an integer
        build_parser().parse_args(["--max_train_steps", "many"])


@pytest.mark.parametrize("name", ["mnist_pixel", "mnist_vae", "mnist_latent"])
def test_bundled_configs_are_valid(name):
    values = load_config_file(CONFIGS / f"{name}.yaml")
    if name == "mnist_latent":
        with pytest.raises(ValueError, match="vae_path"):  # given on the command line
            config_from_dict(values).validate()
        values["vae_path"] = "/runs/mnist-vae/vae"
    config = config_from_dict(values).validate()
    assert config.stage == ("vae" if name == "mnist_vae" else "unet")
    if name != "mnist_vae":
        assert config.num_train_timesteps == 1000 and config.default_num_inference_steps >= 1
    if name == "mnist_latent":
        assert config.latent and config.channel_mult == [1] and not config.clip_sample


# ---------------------------------------------------------------------------------------------------- stages
@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory):
    """One tiny pixel run shared by the tests that read its outputs."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    out = tmp_path_factory.mktemp("pixel")
    config = tiny(out, checkpointing_steps=2, final_eval_num_images=4, final_eval_num_timesteps=5, sample_steps=4,
                  num_sample_images=4, sample_inference_steps=2, eval_steps=4, eval_num_images=4, eval_num_timesteps=3)  # fmt: skip
    result = train(config, argv=["python -m training", "--tiny"])
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return result


def test_pixel_stage_end_to_end(pixel_run):
    out = pixel_run.output_dir
    assert pixel_run.global_step == 4
    assert [step for step, _ in list_checkpoints(out / "checkpoints")] == [2, 4]
    assert (out / "samples" / "step-0000004.png").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and np.isfinite(metrics["bpd"]) and metrics["bpd"] > 0
    assert np.isfinite(metrics["eval/bpd"])
    card = (out / "hub" / "README.md").read_text()
    assert "--tiny" in card  # the exact training command is recorded
    assert "bits/dim" in card


def test_trained_pipeline_loads_samples_and_holds_ema_weights(pixel_run):
    from ddpm_plugin import GaussianDDPMScheduler, PixelDDPMPipeline

    pipe = PixelDDPMPipeline.from_pretrained(pixel_run.final_dir)
    assert isinstance(pipe.scheduler, GaussianDDPMScheduler)
    assert pipe.config.default_num_inference_steps == 3
    assert pipe.scheduler.config.num_train_timesteps == 50
    images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (2, 28, 28, 1) and np.isfinite(images).all()
    assert images.min() >= 0.0 and images.max() <= 1.0
    # the exported weights are the EMA weights of the last checkpoint, not the raw ones
    last = pixel_run.output_dir / "checkpoints" / "checkpoint-4"
    ema = torch.load(last / "custom_checkpoint_0.pkl", weights_only=False)["shadow_params"]
    raw = load_file(last / "model.safetensors")
    params = list(pipe.unet.parameters())
    assert len(params) == len(ema)
    for p, e in zip(params, ema):
        assert torch.equal(p.detach(), e)
    assert any(not torch.equal(p.detach(), raw[name]) for name, p in pipe.unet.named_parameters())


def test_vae_then_latent_stage(tmp_path):
    from diffusers import AutoencoderKL

    from ddpm_plugin import LatentDDPMPipeline

    vae_run = train(tiny(tmp_path / "vae", stage="vae", max_train_steps=3, eval_steps=3, eval_num_images=4))
    assert vae_run.final_dir == tmp_path / "vae" / "vae"
    vae = AutoencoderKL.from_pretrained(vae_run.final_dir)
    assert vae.config.latent_channels == 4 and vae.config.block_out_channels == [8, 8, 8]
    scale = vae.config.scaling_factor
    assert scale == pytest.approx(vae_run.metrics["latent_scale"]) and scale != 1.0
    assert np.isfinite(vae_run.metrics["eval/reconstruction_mse"])
    vae.register_to_config(scaling_factor=10.0)  # a wrong s: the latent stage must estimate its own
    vae.save_pretrained(vae_run.final_dir)

    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    latent_run = train(
        tiny(
            tmp_path / "latent",
            latent=True,
            vae_path=str(vae_run.final_dir),
            channel_mult=[1],
            attention_resolutions=[7],
            clip_sample=False,
            max_train_steps=3,
            final_eval_num_images=4,
            final_eval_num_timesteps=4,
        )  # fmt: skip
    )
    pipe = LatentDDPMPipeline.from_pretrained(latent_run.final_dir)
    assert pipe.unet.config.sample_size == 7 and pipe.unet.config.in_channels == 4
    assert pipe.scheduler.config.clip_sample is False
    # s = 1 / std of the training latents z ~ q(z | x), estimated on the data and stored in the VAE config; the VAE
    # folder was given a wrong s = 10 above, so a stage that kept the folder's value fails here. Computed here from
    # the posterior of the 32 training digits: std(z)^2 = var(mean) + mean(exp(logvar)); the stage draws one z per
    # latent element (32 x 4 x 7 x 7 = 6,272 draws), whose sample std is within a few percent of that.
    digits = torch.from_numpy(mnist_split(seed=0)[0][:32]).float()[:, None] / 127.5 - 1.0
    with torch.no_grad():
        posterior = AutoencoderKL.from_pretrained(vae_run.final_dir).encode(digits).latent_dist
    expected = 1.0 / math.sqrt(float(posterior.mean.double().var() + posterior.var.double().mean()))
    assert pipe.vae.config.scaling_factor == pytest.approx(expected, rel=0.05)
    images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (2, 28, 28, 1) and np.isfinite(images).all()
    assert np.isfinite(latent_run.metrics["bpd"])


def test_finetune_from_saved_pipeline_keeps_weights_and_scheduler(pixel_run, tmp_path):
    from ddpm_plugin import PixelDDPMPipeline

    source = PixelDDPMPipeline.from_pretrained(pixel_run.final_dir)
    # learning rate 0: the fine-tuned weights must be exactly the source's; the scheduler config (T = 50) carries
    # over although this run's own config says T = 1000
    run = train(tiny(tmp_path / "ft", init_from=str(pixel_run.final_dir), learning_rate=0.0, max_train_steps=2,
                     num_train_timesteps=1000, model_channels=16))  # fmt: skip
    tuned = PixelDDPMPipeline.from_pretrained(run.final_dir)
    assert tuned.scheduler.config.num_train_timesteps == 50
    assert tuned.unet.config.model_channels == 8  # the architecture comes from the source
    for (name, a), b in zip(source.unet.state_dict().items(), tuned.unet.state_dict().values()):
        assert torch.equal(a, b), name


def test_finetune_from_diffusers_unet2d_folder_at_new_resolution(tmp_path):
    from diffusers import UNet2DModel

    from ddpm_plugin import DDPMUNet2DModel, PixelDDPMPipeline

    torch.manual_seed(123)  # not the run's seed 0: a freshly initialised UNet would differ from the source
    source = UNet2DModel(
        sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    ).eval()  # fmt: skip
    source.save_pretrained(tmp_path / "unet2d")
    # learning rate 0: the exported (EMA) weights are the converted source weights
    run = train(tiny(tmp_path / "ft", init_from=str(tmp_path / "unet2d"), max_train_steps=2, learning_rate=0.0))
    pipe = PixelDDPMPipeline.from_pretrained(run.final_dir)
    assert isinstance(pipe.unet, DDPMUNet2DModel)
    assert pipe.unet.config.sample_size == 28  # MNIST's resolution, not the source's 16
    # the source's weights arrived: the same function of (x_t, t) at the new resolution (the UNet is convolutional)
    x, t = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1)), torch.tensor([3, 40])
    with torch.no_grad():
        expected = source(x, t).sample
        torch.testing.assert_close(pipe.unet.eval()(x, t).sample, expected, rtol=1e-5, atol=1e-5)
        assert expected.abs().max() > 0.1  # not a trivially zero output


# ---------------------------------------------------------------------------------------------------- reliability
def test_resume_is_exact(tmp_path, bit_exact):
    """Stopping at step 3 and resuming to 6 gives bit-identical weights, EMA and optimizer-driven updates to an
    uninterrupted 6-step run: random flips, dropout, gradient accumulation and an epoch boundary included. Bit-exact
    on the CPU with a fixed thread count; on a GPU also with `bit_exact` (cuBLAS workspace, deterministic kernels)
    and `deterministic=True`."""
    common = dict(max_train_samples=32, train_batch_size=4, gradient_accumulation_steps=2, random_flip=True,
                  dropout=0.1, deterministic=True, checkpointing_steps=3, lr_warmup_steps=2, final_eval_num_images=0)  # fmt: skip
    full = train(tiny(tmp_path / "full", max_train_steps=6, **common))
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    train(tiny(tmp_path / "split", max_train_steps=3, **common), argv=["ddpm-train", "--first"])
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    resumed = train(
        tiny(tmp_path / "split", max_train_steps=6, resume="latest", **common), argv=["ddpm-train", "--then"]
    )
    # the model card and training_config.json keep both commands, in order
    recorded = json.loads((tmp_path / "split" / "training_config.json").read_text())
    assert recorded["commands"] == ["ddpm-train --first", "ddpm-train --then"]
    assert "ddpm-train --first\nddpm-train --then" in (tmp_path / "split" / "hub" / "README.md").read_text()
    assert full.global_step == resumed.global_step == 6
    a = checkpoint_tensors(tmp_path / "full" / "checkpoints" / "checkpoint-6")
    b = checkpoint_tensors(tmp_path / "split" / "checkpoints" / "checkpoint-6")
    assert_same_tensors(a, b)
    # and the run did learn something: step-6 weights differ from step-3 weights
    c = checkpoint_tensors(tmp_path / "full" / "checkpoints" / "checkpoint-3")
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_kill_during_checkpoint_save_then_resume(tmp_path, bit_exact):
    """SIGKILL inside the save of step 4 (after the weights are written): checkpoint-2 stays the latest complete one;
    resuming from it reaches the same step-6 weights as an uninterrupted run (bit-exact: see test_resume_is_exact)."""
    args = tiny_values(tmp_path / "killed", max_train_steps=6, checkpointing_steps=2, deterministic=True)
    flags = []
    for key, value in args.items():
        if isinstance(value, bool):
            flags.append(f"--{key}" if value else f"--no-{key}")
        elif isinstance(value, list):
            flags += [f"--{key}", *map(str, value)]
        else:
            flags += [f"--{key}", str(value)]
    killed = run_cli(*flags, env={DEBUG_KILL_ENV: "4"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    root = tmp_path / "killed" / "checkpoints"
    assert [step for step, _ in list_checkpoints(root)] == [2]
    partial = root / ".tmp-checkpoint-4"
    assert (partial / "model.safetensors").is_file() and not (partial / CHECKPOINT_MARKER).exists()

    resumed = run_cli(*flags, "--resume", "latest")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [step for step, _ in list_checkpoints(root)] == [2, 4, 6]
    assert not partial.exists()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocesses (OMP_NUM_THREADS=1): the same float reduction order
    try:
        reference = train(config_from_dict({**args, "output_dir": str(tmp_path / "ref")}).validate())
    finally:
        torch.set_num_threads(threads)
    assert reference.global_step == 6
    assert_same_tensors(
        checkpoint_tensors(root / "checkpoint-6"),
        checkpoint_tensors(tmp_path / "ref" / "checkpoints" / "checkpoint-6"),
    )


def test_resume_from_incomplete_checkpoint_path_is_refused(tmp_path):
    folder = tmp_path / "run" / "checkpoints" / "checkpoint-9"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"partial")
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        train(tiny(tmp_path / "run", resume=str(folder)))


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"at step 3 .*checkpoint-2"):
        train(tiny(tmp_path / "nan", max_train_steps=6, checkpointing_steps=2, debug_nan_at_step=3))
    root = tmp_path / "nan" / "checkpoints"
    assert [step for step, _ in list_checkpoints(root)] == [2]
    assert not (tmp_path / "nan" / "pipeline").exists()
    weights = load_file(root / "checkpoint-2" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_nan_from_huge_learning_rate_stops_the_run(tmp_path):
    with pytest.raises(NonFiniteLossError, match="no checkpoint was written yet"):
        train(tiny(tmp_path / "lr", learning_rate=1e30, max_grad_norm=None, max_train_steps=30))


# ---------------------------------------------------------------------------------------------------- bad data
def _write_images(folder: Path, count: int, mode: str = "L", size: int = 20) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        shape = (size, size + 4) if mode == "L" else (size, size + 4, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"{i}.png")


def test_image_folder_trains_at_any_size(tmp_path):
    _write_images(tmp_path / "imgs", 8, mode="RGB", size=20)
    run = train(tiny(tmp_path / "run", dataset=str(tmp_path / "imgs"), resolution=16, channels=3, max_train_steps=2,
                     train_batch_size=4, attention_resolutions=[8]))  # fmt: skip
    from ddpm_plugin import PixelDDPMPipeline

    pipe = PixelDDPMPipeline.from_pretrained(run.final_dir)
    assert pipe.unet.config.in_channels == 3 and pipe.unet.config.sample_size == 16


def test_unreadable_image_is_named_before_training(tmp_path):
    _write_images(tmp_path / "imgs", 8)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"cannot read image file .*broken\.png"):
        train(tiny(tmp_path / "run", dataset=str(tmp_path / "imgs"), resolution=16))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_empty_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="holds no image files"):
        train(tiny(tmp_path / "run", dataset=str(tmp_path / "empty"), resolution=16))


def test_dataset_without_the_image_column_is_refused(tmp_path):
    datasets = require_or_skip(module="datasets", install="pip install -e '.[train]'")
    images = [Image.fromarray(np.zeros((8, 8), dtype=np.uint8)) for _ in range(4)]
    datasets.Dataset.from_dict({"picture": images, "label": [0, 1, 2, 3]}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(ValueError, match=r"no column 'image'.*'picture'"):
        train(tiny(tmp_path / "run", dataset=str(tmp_path / "ds"), resolution=8))
    # with the right column it trains
    run = train(tiny(tmp_path / "ok", dataset=str(tmp_path / "ds"), image_column="picture", resolution=8,
                     train_batch_size=2, max_train_steps=1, attention_resolutions=[4]))  # fmt: skip
    assert run.global_step == 1


def test_channel_mismatch_with_finetuned_model_is_refused(pixel_run, tmp_path):
    _write_images(tmp_path / "rgb", 8, mode="RGB")
    with pytest.raises(ValueError, match="takes 1-channel inputs"):
        train(tiny(tmp_path / "run", init_from=str(pixel_run.final_dir), dataset=str(tmp_path / "rgb"), channels=3))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_cli_reports_bad_data_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli("--dataset", str(tmp_path / "empty"), "--resolution", "16", "--output_dir", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "ddpm-train: error:" in result.stderr and "holds no image files" in result.stderr
    assert "Traceback" not in result.stderr


def test_pickled_config_roundtrip():
    config = TrainingConfig(channel_mult=(1, 2))  # tuples are normalised to lists
    assert config.channel_mult == [1, 2]
    assert pickle.loads(pickle.dumps(config)) == config


def test_bf16_gradient_checkpointing_and_hybrid_loss_run(tmp_path):
    """bf16 autocast (accelerate), gradient checkpointing and the learned-variance hybrid objective together."""
    run = train(tiny(tmp_path / "bf16", mixed_precision="bf16", gradient_checkpointing=True, loss_type="hybrid",
                     variance_type="learned_range", snr_gamma=5.0, max_train_steps=2))  # fmt: skip
    assert np.isfinite(run.metrics["train/loss"])
    from ddpm_plugin import PixelDDPMPipeline

    pipe = PixelDDPMPipeline.from_pretrained(run.final_dir)
    assert pipe.unet.config.learned_variance and pipe.scheduler.config.variance_type == "learned_range"
    assert all(p.dtype == torch.float32 for p in pipe.unet.parameters())  # master weights stay float32


# ---------------------------------------------------------------------------------------------------- options
def _scalars(logs: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of the TensorBoard event files under `logs`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, dict[int, float]] = {}
    for folder in sorted({path.parent for path in logs.rglob("events.out.tfevents.*")}):
        accumulator = EventAccumulator(str(folder))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: e.value for e in accumulator.Scalars(tag)})
    return scalars


@pytest.mark.parametrize(
    "lr_scheduler, factor",
    [
        # the multiplier of the learning rate after k optimizer steps, warmup W = 2 of N = 5 steps (diffusers' schedules)
        ("linear", lambda k: k / 2 if k < 2 else (5 - k) / 3),
        ("cosine", lambda k: k / 2 if k < 2 else 0.5 * (1 + math.cos(math.pi * (k - 2) / 3))),
    ],
)
def test_tensorboard_logs_lr_schedule_and_ema_warmup(tmp_path, lr_scheduler, factor):
    """`report_to=tensorboard` (the default) writes an event file with the loss, the learning rate of the chosen
    schedule and the EMA decay of `ema_warmup`, 1 - (1 + step)^-power, at every step."""
    assert TrainingConfig().report_to == "tensorboard"
    run = train(tiny(tmp_path / "run", report_to="tensorboard", lr_scheduler=lr_scheduler, lr_warmup_steps=2,
                     max_train_steps=5, ema_warmup=True, ema_power=0.75, ema_decay=0.999))  # fmt: skip
    scalars = _scalars(tmp_path / "run" / "logs")
    assert sorted(scalars["train/loss"]) == [1, 2, 3, 4, 5]
    assert all(np.isfinite(v) and v > 0 for v in scalars["train/loss"].values())
    assert scalars["train/loss"][5] == pytest.approx(run.metrics["train/loss"], rel=1e-6)  # float32 in the event file
    for k in range(1, 6):
        assert scalars["train/lr"][k] == pytest.approx(1e-3 * factor(k), rel=1e-6, abs=1e-12), k
        # diffusers' EMAModel: no averaging at the first step, then the warmup decay of step k - 1
        decay = 0.0 if k == 1 else 1 - k**-0.75
        assert scalars["train/ema_decay"][k] == pytest.approx(decay, rel=1e-6), k


def test_checkpoints_total_limit_keeps_the_newest(tmp_path):
    run = train(tiny(tmp_path / "run", max_train_steps=4, checkpointing_steps=1, checkpoints_total_limit=2))
    root = tmp_path / "run" / "checkpoints"
    assert run.global_step == 4
    assert [step for step, _ in list_checkpoints(root)] == [3, 4]
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-3", "checkpoint-4"]  # no leftovers of pruning


def test_push_to_hub_at_the_end_of_training(tmp_path):
    from unittest import mock

    from huggingface_hub import HfApi, RepoUrl

    import ddpm_plugin.hub as hub_module

    uploaded = {}

    def upload_folder(**kwargs):
        folder = Path(kwargs["folder_path"])
        uploaded["files"] = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        uploaded["card"] = (folder / "README.md").read_text()

    api_class = mock.create_autospec(HfApi)  # a changed HfApi signature fails here
    api = api_class.return_value
    api.create_repo.return_value = RepoUrl("https://huggingface.co/org/tiny-ddpm")
    api.upload_folder.side_effect = upload_folder
    with mock.patch.object(hub_module, "HfApi", api_class):
        run = train(tiny(tmp_path / "run", push_to_hub="org/tiny-ddpm", hub_private=True, max_train_steps=2),
                    argv=["ddpm-train", "--push_to_hub", "org/tiny-ddpm"])  # fmt: skip
    api.create_repo.assert_called_once_with(repo_id="org/tiny-ddpm", private=True, exist_ok=True, repo_type="model")
    api.upload_folder.assert_called_once()
    assert api.upload_folder.call_args.kwargs["repo_id"] == "org/tiny-ddpm"
    assert {"model_index.json", "README.md", "unet/diffusion_pytorch_model.safetensors"} <= set(uploaded["files"])
    # the uploaded card is the run's card (training command, step count), written for this repository id
    card = uploaded["card"]
    assert "ddpm-train --push_to_hub org/tiny-ddpm" in card and "| training steps | 2" in card
    assert 'DiffusionPipeline.from_pretrained("org/tiny-ddpm"' in card and run.global_step == 2


def test_ddpm_train_console_script(tmp_path):
    """The `ddpm-train` entry point of pyproject.toml: a one-step run, the command recorded as `ddpm-train ...`.

    The installed script is checked to exist; the run calls the entry point that this checkout's pyproject.toml
    registers, the way that script does, in a fresh interpreter whose packages are this checkout (the script file
    itself imports the checkout the environment was installed from, another one in a shared development environment).
    """
    import tomllib

    script = Path(sys.executable).parent / "ddpm-train"
    assert script.is_file(), f"{script} is missing: pip install -e . installs the console script"
    target = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["ddpm-train"]
    module, function = target.split(":")
    run_entry = f"import sys\nfrom {module} import {function}\nsys.argv[0] = {str(script)!r}\nsys.exit({function}())"
    out = tmp_path / "run"
    flags = ["--output_dir", str(out), "--max_train_steps", "1", "--max_train_samples", "8", "--train_batch_size", "4",
             "--model_channels", "8", "--norm_num_groups", "4", "--channel_mult", "1", "--attention_resolutions",
             "--layers_per_block", "1", "--num_train_timesteps", "10", "--default_num_inference_steps", "1",
             "--final_eval_num_images", "0", "--sample_steps", "0", "--eval_steps", "0", "--report_to", "none",
             "--card_grid_inference_steps", "1", "--no-progress_bar"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def ddpm_train(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", run_entry, *args]
        return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    result = ddpm_train(*flags)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"ddpm-train: step 1; final folder: {out / 'pipeline'}" in result.stdout
    recorded = json.loads((out / "training_config.json").read_text())
    assert recorded["command"].startswith("ddpm-train --output_dir")
    bad = ddpm_train("--channels", "2")
    assert bad.returncode == 2 and "ddpm-train: error: channels=2" in bad.stderr
