"""`python -m ddpm_plugin.sample`: sharded, resumable batch sampling, identical across process counts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cuda_bit_exact, require_or_skip
from PIL import Image

from ddpm_plugin import DDPMUNet2DModel, GaussianDDPMScheduler, PixelDDPMPipeline
from ddpm_plugin import sample as sample_module
from ddpm_plugin.sample import generators_for, main, sample_seed, shard_ranges

NUM_SAMPLES, SHARD_SIZE, BATCH_SIZE = 10, 4, 3  # shards [0, 4), [4, 8), [8, 10); batches of 3, 1, 3, 1, 2


@pytest.fixture(scope="module", autouse=True)
def _bit_exact():
    """The tests compare the bytes of images made in different runs and processes: on a GPU that needs cuBLAS's fixed
    workspace (inherited by the torchrun processes) and deterministic kernels; on the CPU nothing."""
    with cuda_bit_exact():
        yield


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random pixel pipeline (8x8 images, 6 steps) saved to a folder."""
    torch.manual_seed(0)
    unet = DDPMUNet2DModel(
        sample_size=8, in_channels=1, model_channels=8, channel_mult=(1,), norm_num_groups=4, attention_resolutions=()
    )
    pipe = PixelDDPMPipeline(
        unet=unet, scheduler=GaussianDDPMScheduler(num_train_timesteps=6), default_num_inference_steps=6
    )
    folder = tmp_path_factory.mktemp("model") / "tiny-pixel"
    pipe.save_pretrained(folder)
    return folder


def _args(model_dir, out, *extra):
    return [
        "--model", str(model_dir), "--num-samples", str(NUM_SAMPLES), "--out", str(out),
        "--shard-size", str(SHARD_SIZE), "--batch-size", str(BATCH_SIZE), *extra,
    ]  # fmt: skip


def _pngs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.png"))}


@pytest.fixture(scope="module")
def single_run(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "samples"
    summary = main(_args(model_dir, out))
    return out, summary


def test_sample_seed_is_a_fixed_function_of_seed_and_index():
    assert sample_seed(0, 0) == sample_seed(0, 0)
    seeds = {sample_seed(s, i) for s in range(3) for i in range(100)}
    assert len(seeds) == 300  # no collisions between nearby (seed, index) pairs
    assert all(0 <= s < 2**64 for s in seeds)
    with pytest.raises(ValueError, match="non-negative"):
        sample_seed(-1, 0)
    a, b = generators_for(0, 5, 7), generators_for(0, 6, 7)
    assert torch.equal(torch.randn(3, generator=a[1]), torch.randn(3, generator=b[0]))


def test_shard_ranges_cover_every_index_once():
    assert shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert shard_ranges(8, 4) == [(0, 4), (4, 8)]
    assert shard_ranges(3, 10) == [(0, 3)]


def test_single_process_writes_every_sample_once(single_run, model_dir):
    out, summary = single_run
    assert sorted(_pngs(out)) == [f"{i:06d}.png" for i in range(NUM_SAMPLES)]
    assert summary["shards"] == summary["shards_done"] == 3 and summary["samples_written"] == NUM_SAMPLES
    assert sorted(p.name for p in (out / ".shards").iterdir()) == [f"shard-{k:05d}.done" for k in range(3)]
    assert not (out / ".tmp").exists()
    config = json.loads((out / "run_config.json").read_text())
    assert config["seed"] == 0 and config["shard_size"] == SHARD_SIZE and config["format"] == "png"

    # sample i is the pipeline's output for generator i (per-sample seeds), whatever batch it was in
    pipe = PixelDDPMPipeline.from_pretrained(model_dir)
    expected = pipe(batch_size=3, generator=generators_for(0, 5, 8), output_type="np").images  # (3, 8, 8, 1)
    for j, i in enumerate(range(5, 8)):
        image = np.asarray(Image.open(out / f"{i:06d}.png"))
        assert image.shape == (8, 8) and image.dtype == np.uint8
        np.testing.assert_allclose(image, expected[j, :, :, 0] * 255, atol=1.0)


def test_npz_format_matches_png(single_run, model_dir, tmp_path):
    out_png, _ = single_run
    out = tmp_path / "npz"
    main(_args(model_dir, out, "--format", "npz"))
    assert sorted(p.name for p in out.glob("*.npz")) == ["shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
    with np.load(out / "shard-00001.npz") as data:
        np.testing.assert_array_equal(data["indices"], np.arange(4, 8))
        assert data["images"].shape == (4, 8, 8, 1) and data["images"].dtype == np.uint8
        for j, i in enumerate(range(4, 8)):
            np.testing.assert_array_equal(data["images"][j, :, :, 0], np.asarray(Image.open(out_png / f"{i:06d}.png")))


def test_interrupted_run_resumes_skipping_finished_shards(single_run, model_dir, tmp_path, monkeypatch):
    reference = _pngs(single_run[0])
    out = tmp_path / "samples"
    real_write_shard = sample_module._write_shard

    def crash_on_last_shard(pipe, out_dir, shard, *rest):
        if shard == 2:
            raise KeyboardInterrupt("killed")
        return real_write_shard(pipe, out_dir, shard, *rest)

    monkeypatch.setattr(sample_module, "_write_shard", crash_on_last_shard)
    with pytest.raises(KeyboardInterrupt):
        main(_args(model_dir, out))
    assert sorted(p.name for p in (out / ".shards").iterdir()) == ["shard-00000.done", "shard-00001.done"]
    assert sorted(_pngs(out)) == [f"{i:06d}.png" for i in range(8)]

    # a killed shard leaves a partial temp folder and a stray file; a finished shard is not touched again
    (out / ".tmp" / "shard-00002").mkdir(parents=True)
    (out / ".tmp" / "shard-00002" / "000008.png").write_bytes(b"partial")
    (out / "000008.png").write_bytes(b"half-renamed")
    Image.new("L", (8, 8)).save(out / "000000.png")  # marks shard 0: it must be skipped, not rewritten
    monkeypatch.setattr(sample_module, "_write_shard", real_write_shard)
    summary = main(_args(model_dir, out))
    assert summary["resumed"] and summary["shards_skipped"] == 2 and summary["samples_written"] == 2
    written = _pngs(out)
    assert sorted(written) == sorted(reference)
    assert written["000000.png"] != reference["000000.png"]  # skipped
    assert all(written[name] == reference[name] for name in reference if name != "000000.png")
    assert not (out / ".tmp").exists()


def test_growing_num_samples_redoes_only_the_grown_last_shard(single_run, model_dir, tmp_path):
    out = tmp_path / "samples"
    main(_args(model_dir, out))
    args = _args(model_dir, out)
    args[args.index("--num-samples") + 1] = "12"
    summary = main(args)
    assert summary["shards_skipped"] == 2 and summary["samples_written"] == 4  # shard [8, 10) became [8, 12)
    assert len(_pngs(out)) == 12
    assert all(_pngs(out)[n] == b for n, b in _pngs(single_run[0]).items())


def test_resuming_with_other_settings_is_refused(model_dir, tmp_path):
    out = tmp_path / "samples"
    main(_args(model_dir, out, "--num-inference-steps", "3"))
    with pytest.raises(ValueError, match=r"seed: 0 before, 1 now"):
        main(_args(model_dir, out, "--num-inference-steps", "3", "--seed", "1"))


def test_bad_arguments(model_dir, tmp_path):
    with pytest.raises(SystemExit):
        main(_args(model_dir, tmp_path / "x", "--scheduler", "euler"))
    with pytest.raises(SystemExit):
        main(["--model", str(model_dir), "--num-samples", "0", "--out", str(tmp_path / "y")])
    with pytest.raises(ValueError, match="neither a bundled model"):
        main(["--model", str(tmp_path / "nowhere"), "--num-samples", "2", "--out", str(tmp_path / "z")])


def test_dtype_auto_follows_the_precision_helper(single_run, model_dir, tmp_path, monkeypatch):
    assert json.loads((single_run[0] / "run_config.json").read_text())["dtype"] == "float32"  # pinned by conftest
    monkeypatch.setenv("DDPM_DTYPE", "bfloat16")
    out = tmp_path / "bf16"
    main(_args(model_dir, out))
    assert json.loads((out / "run_config.json").read_text())["dtype"] == "bfloat16"  # the resolved dtype
    images, reference = _pngs(out), _pngs(single_run[0])
    assert sorted(images) == sorted(reference) and images != reference  # bf16 UNet: close, not bit-identical
    with pytest.raises(ValueError, match=r"dtype: 'bfloat16' before, 'float32' now"):
        main(_args(model_dir, out, "--dtype", "float32"))


def test_other_samplers_write_different_images(single_run, model_dir, tmp_path):
    ddpm = _pngs(single_run[0])
    for name in ("ddim", "dpm", "dpm-sde", "euler-a"):
        out = tmp_path / name
        main(_args(model_dir, out, "--scheduler", name, "--num-inference-steps", "4"))
        images = _pngs(out)
        assert sorted(images) == sorted(ddpm) and images != ddpm


def test_two_processes_under_torchrun_match_one_process(single_run, model_dir, tmp_path):
    torchrun = require_or_skip(path=Path(sys.executable).parent / "torchrun", install="it comes with torch")
    out = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "ddpm_plugin.sample"]
    result = subprocess.run(
        [*command, *_args(model_dir, out), "--threads", "1"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "3/3 shards done" in result.stdout and "process 0 of 2" in result.stdout
    assert _pngs(out) == _pngs(single_run[0])  # same names (no gaps, no extras) and same bytes


def test_bfloat16_dtype_samples_close_to_float32(single_run, model_dir, tmp_path):
    """`--dtype bfloat16`: the pipeline runs in bfloat16 (8-bit mantissa), so the images differ from the float32 ones,
    by a few 8-bit levels on average, and the run config records the dtype."""
    out = tmp_path / "bf16"
    main(_args(model_dir, out, "--dtype", "bfloat16"))
    assert json.loads((out / "run_config.json").read_text())["dtype"] == "bfloat16"
    bf16 = np.stack([np.asarray(Image.open(out / name), dtype=float) for name in sorted(_pngs(out))])
    fp32 = np.stack([np.asarray(Image.open(single_run[0] / name), dtype=float) for name in sorted(_pngs(out))])
    assert bf16.shape == fp32.shape == (NUM_SAMPLES, 8, 8)
    difference = np.abs(bf16 - fp32)
    assert difference.max() > 0  # bfloat16 did run
    assert difference.mean() < 0.05 * 255  # and sampled the same images, up to its rounding
