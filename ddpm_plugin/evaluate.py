# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""Sample quality and likelihood of an MNIST pipeline, measured with the digit judge (`ddpm_plugin.judge`) and the
metrics of `ddpm_plugin.metrics`.

    python -m ddpm_plugin.evaluate --model latent|pixel|<folder> --num-samples 1000 --num-inference-steps 100 \\
        [--scheduler ddpm|ddim|dpm|dpm-sde|euler-a] [--dtype auto] --seed 0 [--bpd] [--bpd-timesteps K] [--bpd-num-images 500] [--out results.json]
    python -m ddpm_plugin.evaluate --tradeoff --model latent [--num-samples 500] [--tradeoff-steps 250,100,50,20] \
        [--write-card]

Metrics, on `--num-samples` generated digits (center-cropped to 28x28 when a model makes 32x32 images):

- confident share: the share of samples the judge labels with probability >= 0.9, and the class histogram (share of
  samples per judged digit, all samples counted);
- Frechet distance between the judge's penultimate features of the samples and of the 500 held-out real digits,
  `||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))` (the FID formula of Heusel et al. 2017 in the judge's
  feature space), next to its reference value: the 500 held-out digits against the 4,500 training digits;
- held-out bits/dim (`--bpd`): `ddpm_plugin.bits_per_dim` on the held-out digits, the full chain unless
  `--bpd-timesteps K` asks for the (faster) K-step respaced estimate; for a latent pipeline the LSGM bound with its VAE;
- pass/fail against the targets in `TARGETS`.

The results go to a JSON file (`--out`) and a markdown section on stdout (`metrics_markdown`), which
`write_metrics_to_card` can put into a pipeline folder's model card (`--write-card`); the trade-off table goes to its
own section of the card (`write_tradeoff_to_card`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from .data import cached_mnist_split
from .judge import DigitJudge, judge_images, load_judge, reference_frechet_distance
from .metrics import (
    CONFIDENCE_THRESHOLD,
    feature_statistics,
    frechet_distance,
    judge_summary,
    memorisation,
    nearest_distances,
)
from .precision import add_dtype_argument, resolve_dtype
from .sample import SCHEDULERS, UnsupportedSamplerError, generators_for, load_pipeline, set_scheduler

__all__ = [
    "TARGETS",
    "check_targets",
    "evaluate_pipeline",
    "metrics_markdown",
    "tradeoff",
    "tradeoff_markdown",
    "write_metrics_to_card",
    "write_tradeoff_to_card",
]

# the quality bar of the bundled MNIST models
TARGETS = {
    "confident_share_min": 0.93,  # share of samples judged with probability >= CONFIDENCE_THRESHOLD (real: 95.6%)
    "class_share_min": 0.07,  # every digit between 7% ...
    "class_share_max": 0.13,  # ... and 13% of the samples
    "frechet_ratio_max": 1.8,  # Frechet distance at most 1.8x the real-vs-real reference
    "pixel_bpd_max": 1.611,  # held-out bits/dim of the pixel model: below that of its first long-trained release
}
TRADEOFF_STEPS = (250, 100, 50, 20)
TRADEOFF_SAMPLERS = ("ddpm", "ddim", "dpm", "dpm-sde", "euler-a")  # the samplers of the trade-off rows
CARD_BEGIN = "<!-- ddpm_plugin.evaluate: begin -->"
CARD_END = "<!-- ddpm_plugin.evaluate: end -->"
TRADEOFF_CARD_BEGIN = "<!-- ddpm_plugin.evaluate tradeoff: begin -->"
TRADEOFF_CARD_END = "<!-- ddpm_plugin.evaluate tradeoff: end -->"


# ---------------------------------------------------------------------------------------------------- data
def _is_latent(pipe) -> bool:
    return getattr(pipe, "vae", None) is not None


def _image_resolution(pipe) -> int:
    """Side of the images a pipeline makes (and its bits/dim is measured on): 28, or 32 for padded MNIST."""
    size = pipe.unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    if _is_latent(pipe):
        size *= 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    return int(size)


def _heldout_for_bpd(pipe, num_images: int | None) -> torch.Tensor:
    """Held-out digits as `(num_images, 1, resolution, resolution)` on the 256-level grid in [-1, 1] (k / 127.5 - 1),
    padded with background to 32x32 for models of padded MNIST, as in training."""
    _, _, heldout_x, _ = cached_mnist_split(seed=0)
    images = torch.from_numpy(heldout_x[:num_images]).double()[:, None] / 127.5 - 1.0  # (N, 1, 28, 28)
    resolution = _image_resolution(pipe)
    if resolution == 32:
        images = torch.nn.functional.pad(images, (2, 2, 2, 2), value=-1.0)  # (N, 1, 32, 32)
    elif resolution != 28:
        raise ValueError(
            f"held-out bits/dim needs a model of 28x28 or 32x32 MNIST images, not {resolution}x{resolution}."
        )
    return images.float()


def _memorisation(images: torch.Tensor) -> dict | None:
    """`metrics.memorisation` of 28x28 (or 32x32 padded) one-channel samples in [0, 1] against the 4,500 training
    digits, with the 500 held-out digits as the yardstick; `None` for other image shapes."""
    if images.shape[1] != 1 or images.shape[-1] not in (28, 32) or images.shape[-2] != images.shape[-1]:
        return None
    if images.shape[-1] == 32:
        images = images[..., 2:30, 2:30]  # the padding added for 32x32 models
    train_x, _, heldout_x, _ = cached_mnist_split(seed=0)
    train = train_x.astype(np.float64) / 255.0
    result = memorisation(
        nearest_distances(images[:, 0].double().numpy(), train), nearest_distances(heldout_x / 255.0, train)
    )
    return result


# ---------------------------------------------------------------------------------------------------- evaluation
def _generate(
    pipe, num_samples: int, num_inference_steps: int | None, seed: int, batch_size: int, progress: bool = True
) -> tuple[torch.Tensor, float]:
    """`num_samples` images `(num_samples, num_channels, height, width)` in [0, 1] and the seconds it took; sample i
    from `generators_for(seed, i, i + 1)`, as `python -m ddpm_plugin.sample` makes them."""
    from tqdm.auto import tqdm

    pipe.set_progress_bar_config(disable=True)
    images = []
    start = time.perf_counter()
    with tqdm(total=num_samples, desc="generating", unit="img", disable=not progress) as bar:
        for b0 in range(0, num_samples, batch_size):
            b1 = min(b0 + batch_size, num_samples)
            out = pipe(
                batch_size=b1 - b0,
                generator=generators_for(seed, b0, b1),
                num_inference_steps=num_inference_steps,
                output_type="np",
            ).images  # (n, H, W, C) in [0, 1]
            images.append(torch.from_numpy(np.asarray(out, dtype=np.float32)).permute(0, 3, 1, 2))
            bar.update(b1 - b0)
    return torch.cat(images), time.perf_counter() - start


def _sample_metrics(judge: DigitJudge, images: torch.Tensor, reference: dict) -> dict:
    probs, features = judge_images(judge, images)
    summary = judge_summary(probs)
    frechet = frechet_distance(*feature_statistics(features), reference["heldout_mu"], reference["heldout_sigma"])
    return {
        **summary,
        "frechet_distance": frechet,
        "frechet_reference": reference["frechet_reference"],
        "frechet_ratio": frechet / reference["frechet_reference"],
    }


def evaluate_pipeline(
    pipe,
    *,
    model_name: str = "",
    num_samples: int = 1000,
    num_inference_steps: int | None = None,
    scheduler: str | None = None,
    seed: int = 0,
    batch_size: int = 250,
    bpd: bool = False,
    bpd_pipe=None,
    bpd_timesteps: int | None = None,
    bpd_num_images: int | None = None,
    bpd_batch_size: int = 50,
    judge: DigitJudge | None = None,
    progress: bool = True,
) -> dict:
    """
    All metrics of one pipeline setting (see the module docstring); returns the results dict written as JSON.

    `scheduler` swaps the sampler (one of `ddpm_plugin.sample.SCHEDULERS`: `"ddpm"` the pipeline's own, respaced when
    `num_inference_steps` < T; `"ddim"`; `"dpm"`; `"dpm-sde"`; `"euler-a"`); `None` samples with the pipeline's own
    `default_sampler`. The bits/dim always uses the pipeline's own DDPM scheduler (a fresh copy of it) and float32
    weights: `bpd_pipe`, the same model loaded in float32, where `pipe`'s networks are in another dtype (default:
    `pipe` itself, which must then be float32).
    """
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2 (a covariance needs two samples), got {num_samples}.")
    bpd_pipe = pipe if bpd_pipe is None else bpd_pipe
    networks = [m for m in (bpd_pipe.unet, getattr(bpd_pipe, "vae", None)) if m is not None]
    dtypes = {getattr(m, "dtype", torch.float32) for m in networks}
    if bpd and dtypes != {torch.float32}:
        raise ValueError(
            f"bits/dim needs float32 weights, but the networks are in {sorted(map(str, dtypes))}; pass bpd_pipe= "
            "(the model loaded in float32)."
        )
    judge = judge if judge is not None else load_judge()
    reference = reference_frechet_distance(judge)
    sampler = scheduler or getattr(pipe, "config", {}).get("default_sampler", None) or "ddpm"
    ddpm_scheduler = pipe.scheduler
    set_scheduler(pipe, scheduler, base=ddpm_scheduler)
    try:
        images, seconds = _generate(pipe, num_samples, num_inference_steps, seed, batch_size, progress)
        steps = int(getattr(pipe, "num_timesteps", 0) or len(pipe.scheduler.timesteps))
    finally:
        pipe.scheduler = ddpm_scheduler
    results = {
        "model": model_name,
        "pipeline_class": type(pipe).__name__,
        "kind": "latent" if _is_latent(pipe) else "pixel",
        "scheduler": sampler,
        "num_inference_steps": steps,
        "dtype": _dtype_name(pipe),
        "num_samples": num_samples,
        "seed": seed,
        "batch_size": batch_size,
        "device": str(pipe.device),
        "image_size": list(images.shape[-2:]),
        "generation_seconds": seconds,
        "seconds_per_image": seconds / num_samples,
        "confidence_threshold": CONFIDENCE_THRESHOLD,
        **_sample_metrics(judge, images, reference),
        "judge_heldout_accuracy": reference["judge_heldout_accuracy"],
        "heldout_confident_share": reference["heldout_confident_share"],
        "memorisation": _memorisation(images),
        "bpd": None,
    }
    if bpd:
        results["bpd"] = _heldout_bpd(
            bpd_pipe, bpd_pipe.scheduler, bpd_timesteps, bpd_num_images, bpd_batch_size, seed
        )
    results["targets"] = check_targets(results)
    results["passed"] = all(t["passed"] for t in results["targets"].values() if t["passed"] is not None)
    return results


def _dtype_name(pipe) -> str:
    """The dtype of the pipeline's networks (the UNet's; the VAE is loaded in the same one), e.g. `"bfloat16"`."""
    return str(getattr(pipe.unet, "dtype", torch.float32)).removeprefix("torch.")


def _heldout_bpd(pipe, scheduler, num_timesteps: int | None, num_images: int | None, batch_size: int, seed: int):
    from .likelihood import bits_per_dim

    images = _heldout_for_bpd(pipe, num_images)
    fresh = type(scheduler).from_config(scheduler.config)
    start = time.perf_counter()
    out = bits_per_dim(
        pipe.unet,
        fresh,
        images.to(pipe.device),
        vae=pipe.vae if _is_latent(pipe) else None,
        generator=torch.Generator().manual_seed(seed),  # CPU: the same noise on any device
        batch_size=batch_size,
        num_timesteps=num_timesteps,
    )
    values = out.bpd.double().cpu()
    result = {
        "bpd": float(values.mean()),
        "bpd_std_error": float(values.std() / math.sqrt(len(values))) if len(values) > 1 else None,
        "prior_bpd": float(out.prior_bpd.double().mean()),
        "decoder_bpd": float(out.decoder_bpd.double().mean()),
        "num_images": len(values),
        "num_timesteps": len(out.timesteps) + 1,  # the KL terms and the decoder step
        "strided": bool(out.strided),
        "resolution": list(images.shape[-2:]),
        "latent_bound": _is_latent(pipe),
        "note": out.note,
        "seconds": time.perf_counter() - start,
    }
    if _is_latent(pipe):
        for name in ("reconstruction_bpd", "posterior_log_prob_bpd", "latent_prior_bpd", "log_scale_bpd"):
            value = getattr(out, name, None)
            result[name] = None if value is None else float(value.double().mean())
        result["decoder_log_scale_fitted"] = out.decoder_log_scale_fitted
    return result


def check_targets(results: dict, targets: dict | None = None) -> dict:
    """
    Pass/fail of each target: `{"name": {"value", "target", "passed"}}`; `passed` is `None` where the metric was not
    measured (bits/dim without `--bpd`) or does not apply (the pixel bits/dim target, for a latent model).
    """
    targets = TARGETS if targets is None else targets
    shares = results["class_shares"]
    low, high = targets["class_share_min"], targets["class_share_max"]
    checks = {
        "confident_share": {
            "value": results["confident_share"],
            "target": f">= {targets['confident_share_min']}",
            "passed": results["confident_share"] >= targets["confident_share_min"],
        },
        "class_balance": {
            "value": [min(shares), max(shares)],
            "target": f"every digit in [{low}, {high}]",
            "passed": all(low <= s <= high for s in shares),
        },
        "frechet_ratio": {
            "value": results["frechet_ratio"],
            "target": f"<= {targets['frechet_ratio_max']} x reference",
            "passed": bool(results["frechet_ratio"] <= targets["frechet_ratio_max"]),  # False for NaN
        },
    }
    bpd = results.get("bpd")
    applies = results.get("kind") == "pixel"
    checks["pixel_bpd"] = {
        "value": bpd["bpd"] if bpd else None,
        "target": f"< {targets['pixel_bpd_max']}" + ("" if applies else " (pixel model only)"),
        "passed": bool(bpd["bpd"] < targets["pixel_bpd_max"]) if (bpd and applies) else None,
    }
    return checks


# ---------------------------------------------------------------------------------------------------- reporting
def _mark(passed: bool | None) -> str:
    return "n/a" if passed is None else ("pass" if passed else "FAIL")


def _memorisation_text(memo: dict | None) -> str:
    if not memo:
        return "Memorisation: not measured (needs 28x28 one-channel digits)."
    return (
        f"Memorisation: {memo['share_below']:.1%} of the samples lie closer to their nearest training digit (pixel L2) "
        f"than the {memo['quantile']:.0%} quantile of the held-out digits' nearest-training distances "
        f"({memo['threshold']:.2f}); about {memo['quantile']:.0%} is what unseen real digits give, far more would mean "
        f"copying. Median nearest-training distance: samples {memo['sample_median']:.2f}, held-out digits "
        f"{memo['heldout_median']:.2f}."
    )


def metrics_markdown(results: dict) -> str:
    """A markdown section (summary table, class histogram, targets) of `evaluate_pipeline` results."""
    bpd = results.get("bpd")
    bpd_text = "not measured"
    if bpd:
        what = "LSGM bound" if bpd["latent_bound"] else "bound"
        chain = f"{bpd['num_timesteps']}-step strided estimate" if bpd["strided"] else "full chain"
        fitted = ", pixel decoder scale fitted on these digits" if bpd.get("decoder_log_scale_fitted") else ""
        bpd_text = (
            f"{bpd['bpd']:.3f} ± {bpd['bpd_std_error'] or 0:.3f} ({what}, {chain}, {bpd['num_images']} held-out "
            f"digits at {bpd['resolution'][0]}x{bpd['resolution'][1]}{fitted})"
        )
    t = results["targets"]
    name = results["model"] or results["pipeline_class"]
    bpd_cell = f"{bpd['bpd']:.3f}" if bpd else "—"
    lines = [
        f"### Evaluation: {name}, {results['scheduler'].upper()} {results['num_inference_steps']} steps",
        "",
        "| model | sampler | steps | samples | confident (p >= 0.9) | Frechet distance (reference) | held-out bits/dim "
        "| s / image | device | dtype |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {name} | {results['scheduler'].upper()} | {results['num_inference_steps']} | {results['num_samples']} "
        f"| {results['confident_share']:.1%} | {results['frechet_distance']:.2f} ({results['frechet_reference']:.2f}) "
        f"| {bpd_cell} | {results['seconds_per_image']:.4f} | {results['device']} | {results.get('dtype', 'float32')} |",
    ]
    lines += [
        "",
        "Share of samples per judged digit: "
        + ", ".join(f"{d}: {s:.1%}" for d, s in enumerate(results["class_shares"]))
        + ".",
        "",
        f"Held-out bits/dim: {bpd_text}.",
        "",
        _memorisation_text(results.get("memorisation")),
        "",
        "| target | value | required | result |",
        "|---|---|---|---|",
        f"| confidently judged | {t['confident_share']['value']:.1%} | >= {TARGETS['confident_share_min']:.0%} "
        f"| {_mark(t['confident_share']['passed'])} |",
        f"| class balance (min, max share) | {t['class_balance']['value'][0]:.1%}, {t['class_balance']['value'][1]:.1%} "
        f"| each in [{TARGETS['class_share_min']:.0%}, {TARGETS['class_share_max']:.0%}] "
        f"| {_mark(t['class_balance']['passed'])} |",
        f"| Frechet distance / reference | {t['frechet_ratio']['value']:.2f} | <= {TARGETS['frechet_ratio_max']:g} "
        f"| {_mark(t['frechet_ratio']['passed'])} |",
        f"| held-out pixel bits/dim | {bpd_cell} | < {TARGETS['pixel_bpd_max']:g} "
        f"| {_mark(t['pixel_bpd']['passed'])} |",
        "",
        f"Judge: a small CNN (`ddpm_plugin.judge`), {results['judge_heldout_accuracy']:.1%} accurate on the 500 "
        f"held-out digits, {results['heldout_confident_share']:.1%} of which it judges with p >= 0.9; the Frechet "
        "distance is computed in its penultimate features against the held-out digits, the reference is held-out "
        "vs. training digits.",
    ]
    return "\n".join(lines) + "\n"


def _write_card_section(folder: str | os.PathLike, begin: str, end: str, markdown: str, heading: str) -> Path:
    """Puts `markdown` between the `begin` and `end` markers of a pipeline folder's model card `README.md`
    (replacing what was there, appended under `heading` otherwise; a card is created if the folder has none),
    written atomically (a temporary file renamed over the card)."""
    card = Path(folder) / "README.md"
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    section = f"{begin}\n{markdown}{end}\n"
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        text = before + section + after
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + f"{heading}\n\n" + section
    tmp = card.with_name(f"{card.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, card)
    return card


def write_metrics_to_card(folder: str | os.PathLike, results: dict) -> Path:
    """
    Puts `metrics_markdown(results)` into the model card `README.md` of a pipeline folder, between
    `<!-- ddpm_plugin.evaluate: begin -->` and `<!-- ddpm_plugin.evaluate: end -->` (replacing an earlier
    evaluation there, appended otherwise; a card is created if the folder has none). Returns the card's path.
    """
    return _write_card_section(folder, CARD_BEGIN, CARD_END, metrics_markdown(results), "## Evaluation")


def write_tradeoff_to_card(folder: str | os.PathLike, rows: list[dict]) -> Path:
    """
    Puts `tradeoff_markdown(rows)` into the model card `README.md` of a pipeline folder, between
    `<!-- ddpm_plugin.evaluate tradeoff: begin -->` and `<!-- ddpm_plugin.evaluate tradeoff: end -->` (replacing an
    earlier table there, appended otherwise). Returns the card's path.
    """
    return _write_card_section(
        folder, TRADEOFF_CARD_BEGIN, TRADEOFF_CARD_END, tradeoff_markdown(rows), "## Steps and quality"
    )


# ---------------------------------------------------------------------------------------------------- trade-off
def tradeoff(
    pipe,
    *,
    model_name: str = "",
    num_samples: int = 500,
    steps: tuple[int, ...] = TRADEOFF_STEPS,
    samplers: tuple[str, ...] = TRADEOFF_SAMPLERS,
    seed: int = 0,
    batch_size: int = 250,
    judge: DigitJudge | None = None,
    progress: bool = True,
) -> list[dict]:
    """
    The steps/quality trade-off: DDPM with the full chain of T steps, then each of `samplers` (respaced DDPM, DDIM,
    DPM-Solver++, DPM-Solver++ SDE, Euler ancestral) at each of `steps`; one `evaluate_pipeline` result per row (same
    seed, so every row starts from the same x_T; each row records the networks' dtype). A sampler the model cannot use
    (DDIM for a learned-variance UNet) gives rows `{"scheduler", "num_inference_steps", "dtype", "skipped": why}`.
    """
    judge = judge if judge is not None else load_judge()
    full = pipe.scheduler.config.num_train_timesteps
    settings = [("ddpm", full)] + [(name, k) for name in samplers for k in steps if k <= full]
    rows = []
    for name, k in settings:
        try:
            row = evaluate_pipeline(
                pipe,
                model_name=model_name,
                num_samples=num_samples,
                num_inference_steps=k,
                scheduler=name,
                seed=seed,
                batch_size=batch_size,
                judge=judge,
                progress=progress,
            )
        except UnsupportedSamplerError as error:  # e.g. DDIM for a learned-variance model: raised before sampling
            row = {
                "scheduler": name,
                "num_inference_steps": k,
                "dtype": _dtype_name(pipe),
                "skipped": str(error),
            }
        rows.append(row)
    return rows


def tradeoff_markdown(rows: list[dict]) -> str:
    """The trade-off rows as a markdown table."""
    first = rows[0]
    lines = [
        f"### Steps vs. quality: {first['model'] or first['pipeline_class']} ({first['num_samples']} samples per row, "
        f"seed {first['seed']}, {first['device']})",
        "",
        "| sampler | steps | dtype | confident (p >= 0.9) | digit shares (min, max) | Frechet distance "
        "| Frechet / reference | s / image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sampler = "DDPM (respaced)" if r["scheduler"] == "ddpm" and r is not first else r["scheduler"].upper()
        if "skipped" in r:
            lines.append(
                f"| {sampler} | {r['num_inference_steps']} | {r['dtype']} | skipped: {r['skipped']} | | | | |"
            )
            continue
        lines.append(
            f"| {sampler} | {r['num_inference_steps']} | {r['dtype']} | {r['confident_share']:.1%} "
            f"| {min(r['class_shares']):.1%}, {max(r['class_shares']):.1%} | {r['frechet_distance']:.2f} "
            f"| {r['frechet_ratio']:.2f} | {r['seconds_per_image']:.4f} |"
        )
    lines += ["", f"Reference Frechet distance (held-out vs. training digits): {first['frechet_reference']:.2f}."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- CLI
def _to_jsonable(value):
    if isinstance(value, dict):
        return {k: _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, np.generic):
        return _to_jsonable(value.item())
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Sample quality (digit judge: confident share, class balance, Frechet distance) and held-out "
        "bits/dim of an MNIST pipeline, with pass/fail against the targets."
    )
    parser.add_argument("--model", default="latent", help="'latent', 'pixel' (bundled) or a pipeline folder")
    parser.add_argument("--num-samples", type=int, default=None, help="default 1000 (500 per row with --tradeoff)")
    parser.add_argument("--num-inference-steps", type=int, default=None, help="default: the pipeline's default")
    parser.add_argument(
        "--scheduler", choices=SCHEDULERS, default=None, help="default: the pipeline's default_sampler"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=250, help="images per pipeline call")
    parser.add_argument("--bpd", action="store_true", help="also the held-out bits/dim (slow: one UNet call per step)")
    parser.add_argument("--bpd-timesteps", type=int, default=None, help="strided bits/dim estimate over K steps")
    parser.add_argument("--bpd-num-images", type=int, default=None, help="held-out digits for bits/dim (default 500)")
    parser.add_argument("--bpd-batch-size", type=int, default=50)
    parser.add_argument(
        "--tradeoff", action="store_true", help="the steps/quality table: DDPM T, then each sampler at K"
    )
    parser.add_argument("--tradeoff-steps", default=",".join(map(str, TRADEOFF_STEPS)), help="comma-separated K")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument(
        "--write-card", action="store_true", help="put the results (or the trade-off table) into the model's README.md"
    )
    parser.add_argument("--judge", default=None, help="folder of the digit judge (default: the shipped one)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    add_dtype_argument(parser, "; the bits/dim always uses the float32 weights")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.num_samples is None:
        args.num_samples = 500 if args.tradeoff else 1000
    if args.num_samples < 2:
        parser.error(f"--num-samples must be at least 2, got {args.num_samples}.")
    for name in ("batch_size", "bpd_batch_size", "bpd_timesteps", "bpd_num_images", "num_inference_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}.")
    try:
        args.tradeoff_steps = tuple(int(k) for k in args.tradeoff_steps.split(",") if k.strip())
    except ValueError:
        parser.error(f"--tradeoff-steps must be comma-separated integers, got {args.tradeoff_steps!r}.")
    return args


def _model_folder(model: str) -> Path:
    """The folder whose model card `--write-card` updates: a bundled model's folder, or the given one."""
    from .resolve import resolve_model

    resolved = resolve_model(model)
    if resolved.kind == "hub":
        raise ValueError(f"--write-card needs a bundled model or a local pipeline folder, got the Hub id {model!r}.")
    return Path(resolved.path)


def main(argv: list[str] | None = None) -> dict | list[dict]:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype(args.dtype, device)
    pipe = load_pipeline(args.model, torch_dtype=None if dtype == torch.float32 else dtype, device=device)
    judge = load_judge(args.judge, device=device)
    progress = not args.no_progress
    if args.tradeoff:
        rows = tradeoff(
            pipe,
            model_name=args.model,
            num_samples=args.num_samples,
            steps=args.tradeoff_steps,
            seed=args.seed,
            batch_size=args.batch_size,
            judge=judge,
            progress=progress,
        )
        print(tradeoff_markdown(rows))
        if args.write_card:
            print(f"model card updated: {write_tradeoff_to_card(_model_folder(args.model), rows)}")
        output: dict | list[dict] = rows
    else:
        bpd = args.bpd or args.bpd_timesteps is not None
        output = evaluate_pipeline(
            pipe,
            model_name=args.model,
            num_samples=args.num_samples,
            num_inference_steps=args.num_inference_steps,
            scheduler=args.scheduler,
            seed=args.seed,
            batch_size=args.batch_size,
            bpd=bpd,
            bpd_pipe=load_pipeline(args.model, device=device) if bpd and dtype != torch.float32 else None,  # float32
            bpd_timesteps=args.bpd_timesteps,
            bpd_num_images=args.bpd_num_images,
            bpd_batch_size=args.bpd_batch_size,
            judge=judge,
            progress=progress,
        )
        print(metrics_markdown(output))
        if args.write_card:
            print(f"model card updated: {write_metrics_to_card(_model_folder(args.model), output)}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(_to_jsonable(output), f, indent=2)
    return output


if __name__ == "__main__":
    main()
