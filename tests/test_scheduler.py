"""GaussianDDPMScheduler: the diffusers scheduler suite, exact parity with diffusers.DDPMScheduler, bad input."""

import itertools

import pytest
import torch
from diffusers import DDPMScheduler

from ddpm_plugin import GaussianDDPMScheduler

SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"]
PREDICTIONS = ["epsilon", "sample", "v_prediction"]
VARIANCES = ["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"]
CLIPPING = ["clip", "none", "threshold"]


def fake_model(sample: torch.Tensor, t, variance_type: str) -> torch.Tensor:
    """A smooth deterministic stand-in for a UNet (diffusers' tests use sample * t / (t + 1))."""
    t = float(t)
    out = 0.8 * sample * (t / (t + 1.0)) + 0.05
    if variance_type == "learned":  # sigma^2 itself, positive
        out = torch.cat([out, 0.01 + 0.005 * torch.tanh(sample)], dim=1)
    elif variance_type == "learned_range":  # v in [-1, 1]
        out = torch.cat([out, 0.9 * torch.tanh(0.5 * sample)], dim=1)
    return out


def config(T, schedule, prediction, variance, clipping, spacing="leading", **extra):
    return dict(
        num_train_timesteps=T,
        beta_schedule=schedule,
        prediction_type=prediction,
        variance_type=variance,
        clip_sample=clipping == "clip",
        thresholding=clipping == "threshold",
        sample_max_value=2.0,
        timestep_spacing=spacing,
        **extra,
    )


@pytest.fixture
def float32_noise(monkeypatch):
    """Makes both schedulers draw z in float32 whatever the sample dtype, so float32 and float64 runs see the same
    noise and a float64 run is the exact reference for a float32 one."""
    import diffusers.schedulers.scheduling_ddpm as diffusers_ddpm

    import ddpm_plugin.schedulers.scheduling_gaussian_ddpm as ours_ddpm

    original = ours_ddpm.randn_tensor

    def randn(shape, generator=None, device=None, dtype=None, **kwargs):
        return original(shape, generator=generator, device=device, dtype=torch.float32).to(dtype)

    monkeypatch.setattr(diffusers_ddpm, "randn_tensor", randn)
    monkeypatch.setattr(ours_ddpm, "randn_tensor", randn)


def run_loops(kw, num_inference_steps=None, shape=(2, 3, 4, 4)):
    """Full sampling loops of four schedulers from the same x_T with the same generator seed: diffusers in float32,
    diffusers in float64 (its alphas_cumprod in float64), ours in float32 and ours in float64. Returns the max abs
    differences over all steps of prev_sample and pred_original_sample:
    (ours64 vs diffusers64, ours32 vs diffusers32, diffusers32 vs exact, ours32 vs exact, diffusers stayed finite)."""
    ref32, ref64, ours32, ours64 = (
        cls(**kw) for cls in (DDPMScheduler, DDPMScheduler, GaussianDDPMScheduler, GaussianDDPMScheduler)
    )
    ref64.alphas_cumprod = ours64.alphas_cumprod_f64.clone()
    ref64.one = torch.tensor(1.0, dtype=torch.float64)
    for s in (ref32, ref64, ours32, ours64):
        if num_inference_steps is not None:
            s.set_timesteps(num_inference_steps)
    assert torch.equal(ref32.timesteps, ours32.timesteps)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    xs = [x.float(), x.clone(), x.float(), x.clone()]
    gens = [torch.Generator().manual_seed(0) for _ in range(4)]
    worst = [0.0] * 4
    finite = True
    for t in ref32.timesteps:
        outs = [
            s.step(fake_model(xi, t, kw["variance_type"]), t, xi, generator=g)
            for s, xi, g in zip((ref32, ref64, ours32, ours64), xs, gens)
        ]
        finite &= all(
            bool(torch.isfinite(o.prev_sample).all() and torch.isfinite(o.pred_original_sample).all())
            for o in outs[:2]
        )
        for i, (a, b) in enumerate([(3, 1), (2, 0), (0, 3), (2, 3)]):
            for field in ("prev_sample", "pred_original_sample"):
                d = (getattr(outs[a], field).double() - getattr(outs[b], field).double()).abs().max().item()
                worst[i] = max(worst[i], d)
        xs = [o.prev_sample for o in outs]
    return (*worst, finite)


CHAINS_50 = [(None, "leading")] + [(n, s) for n in (10, 25) for s in ("leading", "trailing", "linspace")]


def check_parity(kw, n):
    par64, par32, ref_err, ours_err, finite = run_loops(kw, n)
    if not finite:  # diffusers itself breaks down: fixed_large_log takes the sqrt of a log variance
        assert kw["variance_type"] == "fixed_large_log", kw
        return None
    # the same algorithm: identical in float64 (thresholding computes its quantile in float32 in both)
    assert par64 <= (2e-6 if kw["thresholding"] else 1e-10), (kw, n, par64)
    # in float32 the two differ only by diffusers' rounding: diffusers computes beta_t = 1 - abar_t / abar_prev in
    # float32 (relative error 1e-4 at small t); ours is never further from the exact float64 result than diffusers
    assert ours_err <= ref_err + 1e-5, (kw, n, ours_err, ref_err)
    assert par32 <= 1e-5 + 2 * ref_err, (kw, n, par32, ref_err)
    return par64, par32, ref_err, ours_err


@pytest.mark.parametrize("schedule,prediction", list(itertools.product(SCHEDULES, PREDICTIONS)))
def test_parity_50_training_steps(float32_noise, schedule, prediction):
    """Every option combination: full loops at 50 training steps and respaced chains of 10 and 25 steps."""
    for variance, clipping, (n, spacing) in itertools.product(VARIANCES, CLIPPING, CHAINS_50):
        check_parity(config(50, schedule, prediction, variance, clipping, spacing), n)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_parity_1000_training_steps(float32_noise, schedule):
    """Full 1000-step loops for every prediction and variance type (clipped), and unclipped / thresholded epsilon."""
    combos = [(p, v, "clip") for p in PREDICTIONS for v in VARIANCES]
    combos += [("epsilon", v, c) for v in ("fixed_small", "learned_range") for c in ("none", "threshold")]
    for prediction, variance, clipping in combos:
        check_parity(config(1000, schedule, prediction, variance, clipping), None)
