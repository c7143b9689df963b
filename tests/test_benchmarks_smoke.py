"""Smoke tests of the benchmark scripts: every benchmark function runs at tiny sizes with one repeat and returns
well-formed result rows. Nothing here looks at how long anything took."""

import os
import re
import sys

import pytest
import torch

BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH_DIR)

import common  # noqa: E402
from bench_memory import bench_memory  # noqa: E402
from bench_sampling import (  # noqa: E402
    bench_bits_per_dim,
    bench_latent_vs_pixel,
    bench_previews_overhead,
    bench_sampling_loop,
)
from bench_scheduler import bench_scheduler_step  # noqa: E402
from bench_unet import bench_compile, bench_flops, bench_unet_forward, bench_unet_options  # noqa: E402

TINY = common.TINY_UNET_KWARGS
MET_VALUES = {"yes", "n/a", "helps", "hurts", "neutral"}


def check_rows(rows, section, count=None):
    assert rows, "no result rows"
    if count is not None:
        assert len(rows) == count
    for row in rows:
        assert isinstance(row, common.Row)
        assert row.section == section
        assert row.what and row.goal
        assert row.met in MET_VALUES or row.met.startswith("**no**"), row.met
        check_verdict(row)


def _number(text: str) -> float | None:
    match = re.search(r"[-+]?\d+(?:\.\d+)?", text.replace("latent ", ""))
    return float(match.group()) if match else None


def _number_of(row) -> float:
    value = _number(row.ratio)
    assert value is not None, row.ratio
    return value


def check_verdict(row) -> None:
    """The row's verdict follows from its own measured ratio and goal (a missed goal is reported as missed, a met
    one as met); nothing here asks for a speed, only for a consistent verdict. Ratios within rounding of the
    threshold are not judged."""
    goal = re.search(r"(>=|<=)\s*([\d.]+)\s*(x|%)", row.goal)
    value = _number(row.ratio)
    if goal is not None and value is not None:
        threshold = float(goal.group(2))
        if abs(value - threshold) > (0.006 if goal.group(3) == "x" else 0.06):
            ok = value >= threshold if goal.group(1) == ">=" else value <= threshold
            assert (row.met == "yes") == ok and (row.met.startswith("**no**")) == (not ok), (
                row.ratio,
                row.goal,
                row.met,
            )
    elif row.goal.startswith("(measure") and value is not None and row.ratio.endswith("img/s"):
        if abs(value - 1.03) > 0.006 and abs(value - 0.97) > 0.006:
            assert row.met == ("helps" if value > 1.03 else "hurts" if value < 0.97 else "neutral"), (
                row.ratio,
                row.met,
            )
    elif row.goal.startswith("(report") or row.goal == "-":
        assert row.met == "n/a", row.met


def test_check_verdict_catches_a_wrong_verdict():
    row = common.Row("unet", "w", "a", "1", "2", "0.50x img/s", ">= 1.0x img/s", "yes")
    with pytest.raises(AssertionError):
        check_verdict(row)
    row.met = "**no** (50% short)"
    check_verdict(row)
    row = common.Row("bpd", "w", "a", "1", "2", "+25.0% time", "<= 10% overhead", "yes")
    with pytest.raises(AssertionError):
        check_verdict(row)


# ---------------------------------------------------------------------------------------------------- helpers
def test_diffusers_twin_computes_the_same_function():
    reference, ours = common.unet_pair(TINY)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t).sample, reference(x, t).sample, rtol=1e-5, atol=1e-5)
    assert common.count_parameters(ours) == common.count_parameters(reference)


def test_interleaved_alternates_order_and_counts_calls():
    calls = []
    times = common.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert common.paired_ratio({"a": [2.0, 4.0, 6.0], "b": [1.0, 1.0, 2.0]}, "a", "b") == 3.0


def test_machine_info_and_configs():
    info = common.machine_info()
    assert info["cpu"] and int(info["cores"]) >= 1 and info["torch"] == torch.__version__
    pixel, latent = common.pixel_unet_kwargs(), common.latent_unet_kwargs()
    assert pixel["sample_size"] == 28 and pixel["in_channels"] == 1
    assert latent["sample_size"] == 7 and latent["in_channels"] == 4


# ---------------------------------------------------------------------------------------------------- benchmarks
def test_scheduler_step():
    rows = bench_scheduler_step(shapes=((2, 1, 8, 8),), repeats=1, calls=1)
    check_rows(rows, "scheduler", 1)
    assert float(rows[0].note.split()[-1]) < 1e-5  # both schedulers computed the same x_(t-1)


def test_unet_forward():
    rows = bench_unet_forward(models=("tiny",), batch_sizes=(1,), repeats=1, kwargs_override=TINY)
    check_rows(rows, "unet", 2)  # fp32 and bf16
    assert all(0 < _number_of(r) < float("inf") for r in rows)


def test_unet_options_and_flops():
    check_rows(bench_unet_options(models=("latent",), batch_size=1, repeats=1), "options", 4)
    rows = bench_flops(models=("latent",), batch_size=1, repeats=1, matmul_size=64)
    check_rows(rows, "hardware", 2)
    assert all("GFLOP/img" in r.ours for r in rows)


def test_flop_count_of_a_convolution():
    from bench_unet import count_flops

    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    flops = count_flops(lambda x, t: conv(x), torch.randn(1, 3, 4, 4), None)
    assert flops == 2 * 8 * 3 * 9 * 16


def test_compile_reports_its_failure(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    rows = bench_compile(model="latent", batch_size=1, repeats=1)
    check_rows(rows, "options", 1)
    # the failure becomes a row with no measurement and no verdict, naming the error, instead of aborting the run
    row = rows[0]
    assert (row.ours, row.reference, row.ratio, row.met) == ("-", "-", "-", "n/a")
    assert row.note.startswith("compile failed on this CPU: RuntimeError")


def test_compile_path_with_identity_compile(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: model)
    rows = bench_compile(model="latent", batch_size=1, repeats=1)
    check_rows(rows, "options", 1)
    assert "first call" in rows[0].note


def test_sampling_loop_same_images():
    rows = bench_sampling_loop(batch_size=1, steps=2, repeats=1, kwargs_override=TINY)
    check_rows(rows, "sampling", 1)
    assert float(rows[0].note.split()[-1]) < 1e-4  # same seed and weights: the same images as DDPMPipeline


def test_latent_vs_pixel():
    rows = bench_latent_vs_pixel(batch_size=1, steps=(1, 2), repeats=1)
    check_rows(rows, "sampling", 1)
    # pixel / latent seconds per image, both measured (a zero or infinite ratio means a side did not run)
    assert 0 < _number_of(rows[0]) < float("inf")
    assert rows[0].ours.startswith("latent ") and rows[0].reference.startswith("pixel ")


def test_defaults_rows():
    from bench_defaults import bench_defaults_rows

    rows = bench_defaults_rows(batch_size=1, repeats=1, diffusers_steps=2)
    check_rows(rows, "defaults", 5)  # latent: first release, float32; pixel: the same and diffusers' DDPMPipeline
    assert sum(row.goal == "<= 0.25x time" for row in rows) == 2
    assert all(0 < _number_of(row) < float("inf") for row in rows)


@pytest.mark.slow
def test_previews_overhead():
    rows = bench_previews_overhead(batch_size=1, steps=2, repeats=1)
    check_rows(rows, "previews")
    assert {"pipeline"} <= {"pipeline" if "iter_previews" in r.what else "app" for r in rows}


def test_bits_per_dim_overhead():
    rows = bench_bits_per_dim(batch_size=1, num_timesteps=3, repeats=1, kwargs_override=TINY)
    check_rows(rows, "bpd", 1)
    assert rows[0].against == "3 plain UNet forwards"


def test_training_step():
    from run_all import bench_training_step

    rows = bench_training_step(steps=1, repeats=1, batch_size=2)
    check_rows(rows, "training", 1)
    assert rows[0].ours.endswith("img/s"), rows[0].note


@pytest.mark.slow
def test_memory_subprocesses():
    # two fresh interpreters, run side by side: a training step and the sampling flatness check
    rows = bench_memory(
        sample_models=(), train_batches={"pixel": 2}, flat_steps=(1, 3), flat_batch=1, include_256=False
    )
    check_rows(rows, "memory", 2)
    assert all("error" not in r.note and r.ours.startswith(("peak", "then")) for r in rows), rows
    assert rows[-1].what.startswith("sampling memory flat")


# ---------------------------------------------------------------------------------------------------- the runners
def test_results_file_keeps_hand_written_notes(tmp_path):
    import run_all

    path = tmp_path / "RESULTS.md"
    row = common.Row("unet", "UNet | forward", "x", "1", "2", "0.5x", ">= 1.0x", "**no** (50% short)")
    args = run_all.argparse.Namespace(quick=True, threads=1)
    info = common.machine_info()
    run_all.write_results(str(path), run_all.render([row], info, args, 60.0))
    text = path.read_text()
    assert "UNet \\| forward" in text and info["cpu"] in text and "| met? |" in text
    path.write_text("# Title\n\nintro\n\n" + text.split("# Benchmarks\n\n", 1)[1] + "\n## Notes\n\nkeep me\n")
    row.ours = "42"
    run_all.write_results(str(path), run_all.render([row], info, args, 60.0))
    text = path.read_text()
    assert text.startswith("# Title\n\nintro") and "keep me" in text and "| 42 |" in text
    assert text.count(run_all.BEGIN) == 1


def test_gpu_script_dry_run(tmp_path):
    sys.path.insert(0, os.path.join(BENCH_DIR, "gpu"))
    import run_gpu

    output = tmp_path / "gpu.md"
    rows = run_gpu.main(["--dry-run", "--output", str(output)])
    assert {r.section for r in rows} == {"scheduler", "unet", "hardware", "sampling", "training", "memory"}
    assert "dry run" in output.read_text()
