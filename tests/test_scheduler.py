"""GaussianDDPMScheduler: the diffusers scheduler suite, exact parity with diffusers.DDPMScheduler, bad input."""

import itertools

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

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


# ---------------------------------------------------------------------------------------------------- the suite
@pytest.mark.parametrize("T", [1, 50, 1000])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedule_matches_diffusers(T, schedule):
    ref, ours = (
        DDPMScheduler(num_train_timesteps=T, beta_schedule=schedule),
        GaussianDDPMScheduler(num_train_timesteps=T, beta_schedule=schedule),
    )
    assert ours.alphas_cumprod_f64.dtype == torch.float64
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.betas, ref.betas, rtol=1e-6, atol=1e-9)
    assert len(ours) == T


def test_cosine_schedule_closed_form():
    """ND (17): alpha_bar_t = f(t) / f(0) wherever no beta hit the 0.999 cap."""
    T = 1000
    s = GaussianDDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    f = lambda t: np.cos(((t / T + 0.008) / 1.008) * np.pi / 2) ** 2
    t = np.arange(1, T + 1)
    expected = f(t) / f(0)
    assert (s.betas_f64[:-1] < 0.999).all()
    np.testing.assert_allclose(s.alphas_cumprod_f64[:-1].numpy(), expected[:-1], rtol=1e-12)


def test_rescale_zero_snr_matches_diffusers():
    ref = DDPMScheduler(rescale_betas_zero_snr=True)
    ours = GaussianDDPMScheduler(rescale_betas_zero_snr=True)
    assert ours.alphas_cumprod_f64[-1] == 0.0
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod, rtol=1e-5, atol=1e-7)


def test_trained_betas():
    betas = np.linspace(1e-4, 0.02, 10)
    ours = GaussianDDPMScheduler(num_train_timesteps=10, trained_betas=betas.tolist())
    np.testing.assert_allclose(ours.betas_f64.numpy(), betas)
    np.testing.assert_allclose(ours.alphas_cumprod_f64.numpy(), np.cumprod(1 - betas))


def test_posterior_closed_form():
    """Ho (7) coefficients and beta_tilde from alpha_bar, in float64, for the full chain and a respaced one."""
    s = GaussianDDPMScheduler(num_train_timesteps=100)
    abar = s.alphas_cumprod_f64.numpy()
    x0, xt = torch.ones(1, 1, 1, 1, dtype=torch.float64), torch.full((1, 1, 1, 1), 2.0, dtype=torch.float64)
    for chain in (None, [90, 60, 30, 5]):
        if chain:
            s.set_timesteps(timesteps=chain)
        ts = s.timesteps.tolist()
        for i, t in enumerate(ts[:-1]):
            prev = ts[i + 1]
            beta = 1 - abar[t] / abar[prev]
            mean, var, logvar = s.q_posterior_mean_variance(x0, xt, t)
            c0 = np.sqrt(abar[prev]) * beta / (1 - abar[t])
            ct = np.sqrt(1 - beta) * (1 - abar[prev]) / (1 - abar[t])
            assert mean.item() == pytest.approx(c0 * 1.0 + ct * 2.0, rel=1e-12)
            assert var.item() == pytest.approx((1 - abar[prev]) / (1 - abar[t]) * beta, rel=1e-12)
            assert logvar.item() == pytest.approx(np.log(var.item()), rel=1e-12)
        # decoder step: beta_tilde = 0, the clipped log variance is the next step's
        _, var0, logvar0 = s.q_posterior_mean_variance(x0, xt, ts[-1])
        _, _, logvar1 = s.q_posterior_mean_variance(x0, xt, ts[-2])
        assert var0.item() == 0.0 and logvar0.item() == logvar1.item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_add_noise_and_velocity(dtype):
    """Ho (4) on any dtype; v = sqrt(abar) eps - sqrt(1 - abar) x0; both agree with diffusers."""
    ref, ours = DDPMScheduler(), GaussianDDPMScheduler()
    x0 = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    eps = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)).to(dtype)
    t = torch.tensor([0, 10, 500, 999])
    for method in ("add_noise", "get_velocity"):
        a, b = getattr(ours, method)(x0, eps, t), getattr(ref, method)(x0, eps, t)
        exact = getattr(ours, method)(x0.double(), eps.double(), t)
        assert a.dtype == dtype and a.shape == x0.shape
        if dtype in (torch.float32, torch.float64):
            torch.testing.assert_close(a, b.to(dtype), atol=1e-5, rtol=1e-5)
        else:  # half precision: ours (coefficients rounded once from float64) is no further from exact than diffusers
            assert (a.double() - exact).abs().max() <= (b.double() - exact).abs().max() + 1e-3
    abar = ours.alphas_cumprod_f64[999].item()
    expect = np.sqrt(abar) * x0[3].double() + np.sqrt(1 - abar) * eps[3].double()
    torch.testing.assert_close(ours.add_noise(x0.double(), eps.double(), t)[3], expect, atol=1e-12, rtol=1e-12)


def test_step_shapes_and_tuple_output():
    s = GaussianDDPMScheduler(num_train_timesteps=20)
    x = torch.randn(2, 3, 4, 4)
    out = s.step(x * 0.1, 10, x, generator=torch.Generator().manual_seed(0))
    tup = s.step(x * 0.1, 10, x, generator=torch.Generator().manual_seed(0), return_dict=False)
    assert out.prev_sample.shape == x.shape and out.pred_original_sample.shape == x.shape
    assert torch.equal(out.prev_sample, tup[0]) and torch.equal(out.pred_original_sample, tup[1])
    assert s.step(x * 0.1, torch.tensor(10), x, generator=torch.Generator().manual_seed(0)).prev_sample.equal(tup[0])


def test_last_step_is_deterministic_and_interface():
    s = GaussianDDPMScheduler(num_train_timesteps=20)
    x = torch.randn(1, 1, 4, 4)
    a = s.step(x, 0, x, generator=torch.Generator().manual_seed(0)).prev_sample
    b = s.step(x, 0, x, generator=torch.Generator().manual_seed(1)).prev_sample
    assert torch.equal(a, b)  # z = 0 at t = 1 (Algorithm 2)
    assert s.scale_model_input(x, 3) is x and s.init_noise_sigma == 1.0 and s.order == 1
    s.set_timesteps(5)
    assert s.timesteps.tolist() == [16, 12, 8, 4, 0]
    assert s.previous_timestep(16) == 12 and s.previous_timestep(0) == -1
    assert s.previous_timestep(torch.tensor(8)).item() == 4


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [1, 7, 50, 1000])
def test_set_timesteps_matches_diffusers(spacing, n):
    ref, ours = (
        DDPMScheduler(timestep_spacing=spacing, steps_offset=1 if spacing == "leading" and n < 1000 else 0),
        None,
    )
    ours = GaussianDDPMScheduler(**ref.config)
    ref.set_timesteps(n)
    ours.set_timesteps(n)
    assert torch.equal(ref.timesteps, ours.timesteps)
    for t in ours.timesteps[:3]:
        assert int(ref.previous_timestep(int(t))) == ours.previous_timestep(int(t))


def test_save_load_config_round_trip(tmp_path):
    s = GaussianDDPMScheduler(
        num_train_timesteps=77,
        beta_schedule="squaredcos_cap_v2",
        variance_type="learned_range",
        prediction_type="v_prediction",
        timestep_spacing="trailing",
    )
    s.save_pretrained(tmp_path)
    loaded = GaussianDDPMScheduler.from_pretrained(tmp_path)
    strip = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}
    assert strip(loaded.config) == strip(s.config)
    assert torch.equal(loaded.alphas_cumprod_f64, s.alphas_cumprod_f64)


@pytest.mark.parametrize("other", [DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler])
def test_from_config_swaps_both_ways(other):
    ours = GaussianDDPMScheduler(
        num_train_timesteps=100, beta_schedule="scaled_linear", prediction_type="v_prediction"
    )
    theirs = other.from_config(ours.config)
    assert theirs.config.num_train_timesteps == 100 and theirs.config.prediction_type == "v_prediction"
    torch.testing.assert_close(theirs.alphas_cumprod, ours.alphas_cumprod, rtol=1e-6, atol=1e-7)
    back = GaussianDDPMScheduler.from_config(theirs.config)
    assert back.config.beta_schedule == "scaled_linear" and back.config.prediction_type == "v_prediction"
    assert other in ours.compatibles


# ---------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(beta_schedule="quadratic"), "beta_schedule='quadratic'.*linear"),
        (dict(variance_type="fixed"), "variance_type='fixed'.*fixed_small"),
        (dict(prediction_type="noise"), "prediction_type='noise'.*epsilon"),
        (dict(timestep_spacing="uniform"), "timestep_spacing='uniform'"),
        (dict(num_train_timesteps=3, trained_betas=[0.1, -0.1, 0.2]), r"-0\.1.*\(0, 1\]"),
        (dict(num_train_timesteps=3, trained_betas=[0.3, 0.2, 0.1]), r"decrease at t=1.*non-decreasing"),
        (dict(num_train_timesteps=3, trained_betas=[0.1, 0.2]), "2 values but num_train_timesteps is 3"),
        (dict(beta_start=0.02, beta_end=1e-4), "decrease"),
        (dict(num_train_timesteps=0), "num_train_timesteps"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianDDPMScheduler(**kwargs)


def test_bad_set_timesteps_raises():
    s = GaussianDDPMScheduler(num_train_timesteps=100)
    with pytest.raises(ValueError, match=r"num_inference_steps=101.*\[1, 100\]"):
        s.set_timesteps(101)
    with pytest.raises(ValueError, match="strictly descending, but 50 follows 40"):
        s.set_timesteps(timesteps=[90, 40, 50])
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        s.set_timesteps(timesteps=[100, 50])
    with pytest.raises(ValueError, match="not both"):
        s.set_timesteps(10, timesteps=[5, 1])
    s.set_timesteps(10)
    with pytest.raises(ValueError, match="timestep 11 is not in"):
        s.step(torch.zeros(1, 1, 2, 2), 11, torch.zeros(1, 1, 2, 2))


@pytest.mark.parametrize("variance_type,channels", [("fixed_small", 6), ("learned_range", 3), ("learned", 4)])
def test_wrong_model_output_shape_raises(variance_type, channels):
    s = GaussianDDPMScheduler(num_train_timesteps=10, variance_type=variance_type)
    x = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match=rf"variance_type='{variance_type}'.*needs (3|6) channels"):
        s.step(torch.zeros(1, channels, 2, 2), 5, x)
