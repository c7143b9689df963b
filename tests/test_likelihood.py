"""bits_per_dim and the bound terms: closed-form Gaussian cases, the sampler on the same oracle, exact identities
between variance types and parameterisations, chunking / generator / strided behaviour, bad input, and the latent
(LSGM) bound with its change of variables for the latent scale s."""

import copy
import math

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler

from ddpm_plugin import DDPMUNet2DModel, GaussianDDPMScheduler, bits_per_dim
from ddpm_plugin.latent import (
    estimate_latent_scale,
    fit_decoder_log_scale,
    get_decoder_log_scale,
    get_latent_scale,
    set_decoder_log_scale,
    set_latent_scale,
)
from ddpm_plugin.likelihood import (
    discretized_gaussian_log_likelihood,
    gaussian_log_likelihood,
    normal_kl,
)

LEVELS = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0  # the 8-bit grid in [-1, 1]


class Output:
    def __init__(self, sample):
        self.sample = sample


class GaussianOracle(torch.nn.Module):
    """The exact denoiser of Gaussian data N(0, m2 I): E[eps | x_t] = sqrt(1 - abar_t) x_t / (abar_t m2 + 1 - abar_t),
    the best linear noise predictor, written in the scheduler's prediction type. With `variance_type="learned_range"`
    it also outputs the exact reverse variance Var(x_{t-1} | x_t) = beta_tilde_t + coef_x0^2 Var(x_0 | x_t) as
    v in [-1, 1] between the scheduler's clipped log beta_tilde_t (v = -1) and log beta_t (v = +1); with `"learned"`
    it outputs that variance itself. `v_override` pins v (learned_range) instead."""

    def __init__(self, scheduler, m2, v_override=None):
        super().__init__()
        self.scheduler = scheduler
        self.m2 = m2
        self.v_override = v_override

    def forward(self, x, t):
        s = self.scheduler
        abar = s.alphas_cumprod_f64.to(x.device)[t].view(-1, 1, 1, 1).to(x.dtype)
        denom = abar * self.m2 + 1 - abar
        eps = torch.sqrt(1 - abar) * x / denom
        x0 = torch.sqrt(abar) * self.m2 * x / denom  # E[x_0 | x_t]
        pred = {
            "epsilon": eps,
            "sample": x0,
            "v_prediction": torch.sqrt(abar) * eps - torch.sqrt(1 - abar) * x0,
        }[s.config.prediction_type]
        vt = s.config.variance_type
        if vt not in ("learned", "learned_range"):
            return Output(pred)
        # per-sample columns (B, 1, 1, 1): the mean at x_0 = 1, x_t = 0 is coef_x0 of Ho (7)
        one = torch.ones(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device)
        coef_x0, beta_tilde, min_log = s.q_posterior_mean_variance(one, 0 * one, t)
        true_var = beta_tilde + coef_x0**2 * self.m2 * (1 - abar) / denom
        if vt == "learned":
            return Output(torch.cat([pred, true_var.expand_as(x)], dim=1))
        if self.v_override is not None:
            v = torch.full_like(x, float(self.v_override))
        else:
            max_log = torch.log(s.betas_f64.to(x.device)[t]).view(-1, 1, 1, 1).to(x.dtype)
            v = (2 * (torch.log(true_var) - min_log) / (max_log - min_log) - 1).clamp(-1, 1).expand_as(x)
        return Output(torch.cat([pred, v], dim=1))


def quantized_gaussian(n, shape, sd, seed):
    """8-bit quantisation of N(0, sd^2) clipped to [-1, 1]; returns the images and the exact per-pixel level
    probabilities (edge bins extended to +-inf)."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, *shape, generator=g, dtype=torch.float64) * sd).clamp(-1, 1)
    x = torch.round((x + 1) * 127.5) / 127.5 - 1
    upper = torch.special.ndtr((LEVELS + 1 / 255) / sd)
    lower = torch.special.ndtr((LEVELS - 1 / 255) / sd)
    upper[-1], lower[0] = 1.0, 0.0
    return x, upper - lower


def exact_nll_bits(x, probs):
    """-log2 p_data(x) per image and dimension, `(batch_size,)`."""
    k = torch.round((x + 1) * 127.5).long()
    return (-torch.log2(probs[k])).mean(dim=(1, 2, 3))


# ------------------------------------------------------------------------------------------------ the terms
@pytest.mark.parametrize("mean", [-1.3, -1.0, -0.2, 0.0, 1 / 255, 0.77, 1.0, 2.0])
@pytest.mark.parametrize("log_scale", [-20.0, -8.0, -3.0, 0.0, 2.0])
def test_discretized_gaussian_is_a_distribution_over_256_levels(mean, log_scale):
    logp = discretized_gaussian_log_likelihood(LEVELS, torch.tensor(mean, dtype=torch.float64), log_scale)
    assert torch.isfinite(logp).all()
    assert (logp <= 1e-12).all()
    # bin edges are rounded in float64: with sigma = 2e-9 a mean exactly on an edge (0) sees ~1e-17 / sigma
    tol = 1e-7 if log_scale < -15 else 1e-10
    assert abs(float(torch.logsumexp(logp, 0).exp()) - 1.0) < tol


def test_discretized_gaussian_values():
    # moderate scale: the plain CDF difference is accurate
    x = LEVELS[[0, 3, 100, 200, 255]]
    mean, log_scale = torch.tensor(0.1, dtype=torch.float64), math.log(0.3)
    upper = torch.special.ndtr((x + 1 / 255 - mean) / 0.3)
    lower = torch.special.ndtr((x - 1 / 255 - mean) / 0.3)
    upper[-1], lower[0] = 1.0, 0.0
    ref = torch.log(upper - lower)
    assert torch.allclose(discretized_gaussian_log_likelihood(x, mean, log_scale), ref, rtol=1e-10, atol=0)
    # tiny scale: a mean on a bin centre keeps all of its mass; the neighbouring bin gets a finite log mass that
    # matches the Gaussian tail asymptotics log Phi(-a) ~ -a^2 / 2 - log(a sqrt(2 pi))
    tiny = -12.0
    centre = LEVELS[128]
    assert abs(float(discretized_gaussian_log_likelihood(centre, centre, tiny))) < 1e-12
    neighbour = float(discretized_gaussian_log_likelihood(LEVELS[129], centre, tiny))
    a = (1 / 255) * math.exp(12.0)
    assert math.isfinite(neighbour)
    assert abs(neighbour - (-0.5 * a * a - math.log(a * math.sqrt(2 * math.pi)))) < 1e-6 * abs(neighbour)
    # mirror symmetry: p(x | mu) = p(-x | -mu)
    mu = torch.tensor(0.37, dtype=torch.float64)
    for log_scale in (-9.0, -2.0):
        left = discretized_gaussian_log_likelihood(LEVELS, mu, log_scale)
        right = discretized_gaussian_log_likelihood(-LEVELS, -mu, log_scale)
        assert torch.allclose(left, right, rtol=1e-12, atol=1e-12)


def test_discretized_gaussian_gradient_is_finite_for_tiny_scale():
    log_scale = torch.tensor([-15.0, -5.0, 0.5], dtype=torch.float64, requires_grad=True)
    mean = torch.tensor([0.0, 0.3, -0.9], dtype=torch.float64, requires_grad=True)
    x = LEVELS[[128, 170, 12]]
    discretized_gaussian_log_likelihood(x, mean, log_scale).sum().backward()
    assert torch.isfinite(log_scale.grad).all() and torch.isfinite(mean.grad).all()


def test_gaussian_log_likelihood_matches_torch_normal():
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)
    ref = torch.distributions.Normal(0.4, 0.7).log_prob(x)
    assert torch.allclose(gaussian_log_likelihood(x, torch.tensor(0.4, dtype=torch.float64), math.log(0.7)), ref)


def test_normal_kl_values():
    m = torch.tensor([0.3, -1.0], dtype=torch.float64)
    lv = torch.tensor([-2.0, 0.5], dtype=torch.float64)
    assert torch.equal(normal_kl(m, lv, m, lv), torch.zeros(2, dtype=torch.float64))
    # KL(N(0, 1) || N(1, 4)) = log 2 + (1 + 1) / 8 - 1/2
    value = normal_kl(torch.tensor(0.0), 0.0, torch.tensor(1.0), math.log(4.0))
    assert abs(float(value) - (math.log(2) + 0.25 - 0.5)) < 1e-7
    p = torch.distributions.Normal(m, torch.exp(0.5 * lv))
    q = torch.distributions.Normal(m.flip(0) + 0.2, torch.exp(0.5 * lv.flip(0)))
    kl = normal_kl(m, lv, m.flip(0) + 0.2, lv.flip(0))
    assert torch.allclose(kl, torch.distributions.kl_divergence(p, q), rtol=1e-12)


# ------------------------------------------------------------------------------------------------ closed form
def test_bound_of_the_exact_reverse_process_equals_the_data_entropy():
    """8-bit Gaussian data (sd 0.3, so clipping at +-1 is negligible), T = 1000 linear. The oracle gives the exact
    reverse process of N(0, m2) data (mean and, through learned_range, variance), so the bound is tight up to the
    discretisation: it must equal the exact discrete entropy. Measured: bound 7.311 vs entropy 7.300 bits/dim, bound
    minus the data's own NLL (paired, low variance) 0.007 +- 0.005."""
    x, probs = quantized_gaussian(1000, (1, 8, 8), sd=0.3, seed=0)
    entropy = float(-(probs * torch.log2(probs)).sum())
    m2 = float((x**2).mean())
    scheduler = GaussianDDPMScheduler(variance_type="learned_range", clip_sample=False)
    out = bits_per_dim(GaussianOracle(scheduler, m2), scheduler, x, generator=torch.Generator().manual_seed(1))
    gap = float((out.bpd - exact_nll_bits(x, probs)).mean())  # paired with the data's own NLL: low variance
    assert abs(gap) < 0.02, gap
    assert abs(float(out.bpd.mean()) - entropy) < 0.02, (float(out.bpd.mean()), entropy)
    assert not out.strided and out.timesteps == list(range(999, 0, -1)) and out.decoder_timestep == 0


def test_bound_of_the_linear_oracle_with_fixed_variances_is_above_the_entropy():
    """The same oracle mean with fixed variances: an upper bound on the entropy. fixed_large is close (beta_t is
    near the true reverse variance of this data; measured gap 0.015 +- 0.008) while fixed_small is loose by 0.77 bits/dim
    (beta_tilde_t is far below the true reverse variance at small t, ND section 3.1)."""
    x, probs = quantized_gaussian(500, (1, 8, 8), sd=0.3, seed=2)
    entropy = float(-(probs * torch.log2(probs)).sum())
    nll = exact_nll_bits(x, probs)
    m2 = float((x**2).mean())
    gaps = {}
    for variance_type in ("fixed_small", "fixed_large"):
        scheduler = GaussianDDPMScheduler(variance_type=variance_type, clip_sample=False)
        out = bits_per_dim(GaussianOracle(scheduler, m2), scheduler, x, generator=torch.Generator().manual_seed(3))
        gaps[variance_type] = float((out.bpd - nll).mean())
        assert float(out.bpd.mean()) > entropy - 0.03
    assert 0.5 < gaps["fixed_small"] < 1.0, gaps
    assert -0.03 < gaps["fixed_large"] < 0.05, gaps


def _predicted_sampler_variance(m2, variance_type, num_train_timesteps=1000):
    """Var(x_0) of Algorithm 2 with the linear oracle x0_hat = k_t x_t, by the exact recursion
    Var_{t-1} = (coef_x0 k_t + coef_xt)^2 Var_t + sigma_t^2 (numpy, independent of the scheduler)."""
    betas = np.linspace(1e-4, 0.02, num_train_timesteps)
    alphas = 1 - betas
    abar = np.cumprod(alphas)
    var = 1.0
    for t in range(num_train_timesteps - 1, -1, -1):
        abar_prev = abar[t - 1] if t > 0 else 1.0
        coef_x0 = np.sqrt(abar_prev) * betas[t] / (1 - abar[t])
        coef_xt = np.sqrt(alphas[t]) * (1 - abar_prev) / (1 - abar[t])
        k = np.sqrt(abar[t]) * m2 / (abar[t] * m2 + 1 - abar[t])
        sigma2 = (1 - abar_prev) / (1 - abar[t]) * betas[t] if variance_type == "fixed_small" else betas[t]
        var = (coef_x0 * k + coef_xt) ** 2 * var + (sigma2 if t > 0 else 0.0)
    return var


@pytest.mark.parametrize("variance_type", ["fixed_large", "fixed_small"])
def test_sampler_with_the_oracle_reproduces_the_data_variance(variance_type):
    """Algorithm 2 through scheduler.step, T = 1000, 4000 x 1x8x8 samples. fixed_large reproduces m2 within 2%
    (measured ratio 1.002); fixed_small under-disperses by design (measured 0.971); both match the exact
    recursion within 1%."""
    m2 = 0.09
    scheduler = GaussianDDPMScheduler(variance_type=variance_type, clip_sample=False)
    oracle = GaussianOracle(scheduler, m2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 1, 8, 8, generator=g)
    for t in scheduler.timesteps:
        timesteps = torch.full((x.shape[0],), int(t), dtype=torch.long)
        x = scheduler.step(oracle(x, timesteps).sample, t, x, generator=g).prev_sample
    ratio = float((x.double() ** 2).mean()) / m2
    predicted = _predicted_sampler_variance(m2, variance_type) / m2
    assert abs(ratio - predicted) < 0.01, (ratio, predicted)
    if variance_type == "fixed_large":
        assert abs(ratio - 1.0) < 0.02, ratio


# ------------------------------------------------------------------------------------------------ identities
def small_data(n=6, shape=(2, 3, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 256, (n, *shape), generator=g)
    return k.double() / 127.5 - 1


@pytest.mark.parametrize("end,fixed", [(-1.0, "fixed_small"), (1.0, "fixed_large")])
def test_learned_range_ends_reproduce_the_fixed_variances(end, fixed):
    x = small_data()
    results = []
    for variance_type, v in (("learned_range", end), (fixed, None)):
        scheduler = GaussianDDPMScheduler(num_train_timesteps=50, beta_end=0.2, variance_type=variance_type)
        oracle = GaussianOracle(scheduler, 0.3, v_override=v)
        results.append(bits_per_dim(oracle, scheduler, x, generator=torch.Generator().manual_seed(0)))
    a, b = results
    for name in ("bpd", "prior_bpd", "decoder_bpd", "timestep_bpd"):
        assert torch.allclose(getattr(a, name), getattr(b, name), rtol=0, atol=1e-6), name
    assert float((a.bpd - b.bpd).abs().max()) < 1e-6


def test_learned_variance_equal_to_beta_tilde_reproduces_fixed_small():
    x = small_data()

    class LearnedBetaTilde(GaussianOracle):
        def forward(self, sample, t):
            eps = super().forward(sample, t).sample[:, : sample.shape[1]]
            log_var = self.scheduler.q_posterior_mean_variance(sample, sample, t)[2]  # clipped log beta_tilde
            return Output(torch.cat([eps, torch.exp(log_var).expand_as(sample)], dim=1))

    bounds = []
    for variance_type, model in (("learned", LearnedBetaTilde), ("fixed_small", GaussianOracle)):
        scheduler = GaussianDDPMScheduler(num_train_timesteps=40, beta_end=0.2, variance_type=variance_type)
        bounds.append(bits_per_dim(model(scheduler, 0.3), scheduler, x, generator=torch.Generator().manual_seed(5)))
    assert torch.allclose(bounds[0].bpd, bounds[1].bpd, rtol=0, atol=1e-9)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "learned_range"])
def test_the_three_parameterisations_of_the_same_denoiser_give_the_same_bound(variance_type):
    x = small_data()
    bounds = {}
    for prediction_type in ("epsilon", "sample", "v_prediction"):
        scheduler = GaussianDDPMScheduler(
            num_train_timesteps=40, beta_end=0.2, prediction_type=prediction_type, variance_type=variance_type
        )
        oracle = GaussianOracle(scheduler, 0.3)
        bounds[prediction_type] = bits_per_dim(oracle, scheduler, x, generator=torch.Generator().manual_seed(2)).bpd
    assert torch.allclose(bounds["epsilon"], bounds["sample"], rtol=1e-10, atol=1e-10)
    assert torch.allclose(bounds["epsilon"], bounds["v_prediction"], rtol=1e-10, atol=1e-10)


def test_parts_add_up_and_prior_term_is_the_closed_form_kl():
    x = small_data()
    scheduler = GaussianDDPMScheduler(num_train_timesteps=30, beta_end=0.3)
    out = bits_per_dim(GaussianOracle(scheduler, 0.3), scheduler, x, generator=torch.Generator().manual_seed(0))
    assert out.bpd.shape == (6,) and out.timestep_bpd.shape == (6, 29) and out.bpd.dtype == torch.float64
    total = out.prior_bpd + out.timestep_bpd.sum(1) + out.decoder_bpd
    assert torch.allclose(out.bpd, total, rtol=1e-12)
    assert torch.allclose(out.total_nats, out.bpd * out.num_dims * math.log(2), rtol=1e-12)
    assert out.num_dims == 18
    # L_T = sum_i KL(N(sqrt(abar_T) x_i, 1 - abar_T) || N(0, 1)), by hand in numpy
    abar_T = float(np.prod(1 - np.linspace(1e-4, 0.3, 30)))
    xs = x.numpy().reshape(6, -1)
    kl = 0.5 * (-1 - np.log(1 - abar_T) + (1 - abar_T) + abar_T * xs**2).sum(1)
    assert np.allclose(out.prior_bpd.numpy(), kl / (18 * math.log(2)), rtol=1e-9)
    assert (out.timestep_bpd > 0).all()


# ------------------------------------------------------------------------------------------------ behaviour
class CountingModel(torch.nn.Module):
    def __init__(self, scheduler):
        super().__init__()
        self.oracle = GaussianOracle(scheduler, 0.3)
        self.calls = []

    def forward(self, x, t):
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        self.calls.append((x.shape[0], int(t[0])))
        return self.oracle(x, t)


def test_strided_estimate_uses_the_respaced_chain_and_leaves_the_scheduler_alone():
    x = small_data(n=4)
    scheduler = GaussianDDPMScheduler(timestep_spacing="trailing")
    scheduler.set_timesteps(7)
    before = scheduler.timesteps.clone()
    model = CountingModel(scheduler)
    out = bits_per_dim(model, scheduler, x, num_timesteps=50, generator=torch.Generator().manual_seed(0))
    assert out.strided and "respaced" in out.note
    reference = copy.deepcopy(scheduler)
    reference.set_timesteps(50)
    chain = reference.timesteps.tolist()
    assert out.timesteps == chain[:-1] and out.decoder_timestep == chain[-1]
    assert out.timestep_bpd.shape == (4, 49)
    assert [t for _, t in model.calls] == chain  # one call per chain step
    assert torch.isfinite(out.bpd).all() and (out.bpd > 0).all()
    assert torch.equal(scheduler.timesteps, before)  # the user's scheduler is untouched
    full = bits_per_dim(GaussianOracle(scheduler, 0.3), scheduler, x, num_timesteps=1000)
    assert not full.strided and len(full.timesteps) == 999


def test_batch_size_chunking_gives_identical_results_with_one_call_per_step_and_image():
    x = small_data(n=10)
    scheduler = GaussianDDPMScheduler(num_train_timesteps=20, beta_end=0.3)
    whole = bits_per_dim(GaussianOracle(scheduler, 0.3), scheduler, x, generator=torch.Generator().manual_seed(4))
    model = CountingModel(scheduler)
    chunked = bits_per_dim(model, scheduler, x, batch_size=3, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(whole.bpd, chunked.bpd, rtol=0, atol=1e-12)
    assert torch.allclose(whole.timestep_bpd, chunked.timestep_bpd, rtol=0, atol=1e-12)
    assert len(model.calls) == 20 * 4 and sum(n for n, _ in model.calls) == 20 * 10
    assert [n for n, _ in model.calls[:4]] == [3, 3, 3, 1]


def test_generator_makes_the_estimate_reproducible():
    x = small_data()
    scheduler = GaussianDDPMScheduler(num_train_timesteps=20, beta_end=0.3)
    oracle = GaussianOracle(scheduler, 0.3)
    a = bits_per_dim(oracle, scheduler, x, generator=torch.Generator().manual_seed(7)).bpd
    b = bits_per_dim(oracle, scheduler, x, generator=torch.Generator().manual_seed(7)).bpd
    c = bits_per_dim(oracle, scheduler, x, generator=torch.Generator().manual_seed(8)).bpd
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_runs_a_real_unet_in_its_own_dtype():
    unet = DDPMUNet2DModel(
        sample_size=8,
        in_channels=3,
        model_channels=8,
        channel_mult=(1, 2),
        layers_per_block=1,
        attention_resolutions=(),
        norm_num_groups=4,
    ).eval()
    seen = []
    unet.register_forward_pre_hook(lambda module, args: seen.append((args[0].dtype, args[1].dtype)))
    scheduler = GaussianDDPMScheduler(num_train_timesteps=10, beta_end=0.3)
    x = small_data(n=2, shape=(3, 8, 8)).float()
    out = bits_per_dim(unet, scheduler, x, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.bpd).all() and out.bpd.shape == (2,)
    assert seen == [(torch.float32, torch.long)] * 10


def test_bad_input_raises_value_error():
    scheduler = GaussianDDPMScheduler(num_train_timesteps=10)
    oracle = GaussianOracle(scheduler, 0.3)
    x = small_data(n=2)
    with pytest.raises(ValueError, match="256-level grid"):
        bits_per_dim(oracle, scheduler, x + 0.002)
    with pytest.raises(ValueError, match="shape"):
        bits_per_dim(oracle, scheduler, x[0])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        bits_per_dim(oracle, scheduler, x * 3 - 0.0)
    with pytest.raises(ValueError, match="uint8|x / 127.5"):
        bits_per_dim(oracle, scheduler, torch.zeros(1, 1, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="NaN"):
        bits_per_dim(oracle, scheduler, torch.full((1, 1, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="bfloat16"):
        bits_per_dim(oracle, scheduler, x.bfloat16())
    with pytest.raises(ValueError, match="batch_size"):
        bits_per_dim(oracle, scheduler, x, batch_size=0)
    with pytest.raises(ValueError, match="num_timesteps"):
        bits_per_dim(oracle, scheduler, x, num_timesteps=11)
    with pytest.raises(ValueError, match="GaussianDDPMScheduler"):
        bits_per_dim(oracle, DDPMScheduler(num_train_timesteps=10), x)
    with pytest.raises(ValueError, match="channels"):  # a fixed-variance model fed to a learned_range scheduler
        bits_per_dim(oracle, GaussianDDPMScheduler(num_train_timesteps=10, variance_type="learned_range"), x)


# ------------------------------------------------------------------------------------------------ latent model
def tiny_vae(seed=0):
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=2,
        norm_num_groups=4,
        sample_size=8,
    ).eval()


class StubPosterior:
    def __init__(self, mean, logvar):
        self.mean, self.logvar = mean, logvar
        self.std = torch.exp(0.5 * logvar)

    def sample(self, generator=None):
        return self.mean + self.std * torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype)


class StubVAE(torch.nn.Module):
    """q(z | x) = N(a x, sigma^2) channel-wise, a known synthetic latent distribution."""

    def __init__(self, a, log_sigma):
        super().__init__()
        self.a, self.log_sigma = a, log_sigma
        self.config = {}

    def encode(self, x):
        mean = self.a * x
        out = Output(None)
        out.latent_dist = StubPosterior(mean, torch.full_like(mean, 2 * self.log_sigma))
        return out

    def decode(self, z):
        return Output(z / self.a)


def test_estimate_latent_scale_is_one_over_the_latent_std():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 2, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    # deterministic latents (sigma ~ 0): s = 1 / std(a x) exactly
    s = estimate_latent_scale(StubVAE(3.0, -30.0), x, batch_size=10)
    assert abs(s - 1 / float((3.0 * x).std())) < 1e-9 / float((3.0 * x).std())
    # Var(z) = a^2 Var(x) + sigma^2 (Var(x) = 1/3 for uniform x): s within sampling error of 1 / sqrt(3 + 4)
    s = estimate_latent_scale(StubVAE(3.0, math.log(2.0)), x, generator=torch.Generator().manual_seed(1))
    assert abs(s * math.sqrt(9 / 3 + 4) - 1) < 0.02, s
    # a real AutoencoderKL: 1 / std of the sampled latents, chunked, same generator
    vae = tiny_vae()
    images = small_data(n=5, shape=(3, 8, 8)).float()
    s = estimate_latent_scale(vae, images, batch_size=2, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        z = torch.cat([vae.encode(images[i : i + 2]).latent_dist.sample(generator=g) for i in range(0, 5, 2)])
    assert abs(s - 1 / float(z.double().std())) < 1e-9
    set_latent_scale(vae, s)
    assert vae.config.scaling_factor == s
    with pytest.raises(ValueError, match="scale"):
        set_latent_scale(vae, -1.0)


def test_fit_decoder_log_scale_maximises_the_discretized_likelihood():
    vae = tiny_vae()
    images = small_data(n=4, shape=(3, 8, 8)).float()
    log_scale = fit_decoder_log_scale(vae, images, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=g)
        decoded = vae.decode(posterior.mean + posterior.std * noise).sample

    def loglik(v):
        return float(discretized_gaussian_log_likelihood(images.double(), decoded.double(), v).sum())

    assert loglik(log_scale) >= max(loglik(log_scale - 1e-3), loglik(log_scale + 1e-3))
    assert loglik(log_scale) > max(loglik(log_scale - 0.3), loglik(log_scale + 0.3))
    # a randomly initialised decoder outputs ~0, so the ML scale is about the rms of the images
    assert abs(log_scale - math.log(float(((images.double() - decoded.double()) ** 2).mean().sqrt()))) < 0.3


def _rescaled_scheduler(scheduler_a, k):
    """The VP schedule whose SNR is SNR_A / k^2: abar_B = abar_A / (abar_A + k^2 (1 - abar_A))."""
    abar = scheduler_a.alphas_cumprod_f64.numpy()
    abar_b = abar / (abar + k * k * (1 - abar))
    betas = 1 - abar_b / np.concatenate([[1.0], abar_b[:-1]])
    return GaussianDDPMScheduler(
        num_train_timesteps=len(betas),
        trained_betas=betas.tolist(),
        prediction_type="sample",
        variance_type="learned",
        clip_sample=False,
    )


class PushforwardModel(torch.nn.Module):
    """Model B for data z0_B = k z0_A on schedule B (SNR_B = SNR_A / k^2): x^B_t = c_t x^A_t with
    c_t = sqrt((1 - abar^B_t) / (1 - abar^A_t)) is the same forward chain, so B's reverse step is A's pushed forward
    by x -> c x: mean c_prev mu_A(x / c_t), variance c_prev^2 sigma_A^2, with c_prev = k at the decoder step."""

    def __init__(self, model_a, scheduler_a, scheduler_b, k):
        super().__init__()
        self.model_a, self.a, self.b, self.k = model_a, scheduler_a, scheduler_b, k

    def c(self, t):
        abar_a, abar_b = self.a.alphas_cumprod_f64[t], self.b.alphas_cumprod_f64[t]
        return torch.sqrt((1 - abar_b) / (1 - abar_a)).view(-1, 1, 1, 1)

    def forward(self, x, t):
        x_a = x / self.c(t)
        reverse_a = self.a.p_mean_variance(self.model_a(x_a, t).sample, x_a, t)
        c_prev = torch.where(t > 0, self.c((t - 1).clamp(min=0)).view(-1), torch.tensor(self.k, dtype=x.dtype))
        c_prev = c_prev.view(-1, 1, 1, 1)
        mean_b = c_prev * reverse_a.mean
        var_b = c_prev**2 * torch.exp(reverse_a.log_variance)
        coef_x0 = self.b.q_posterior_mean_variance(torch.ones_like(x), torch.zeros_like(x), t)[0]
        coef_xt = self.b.q_posterior_mean_variance(torch.zeros_like(x), torch.ones_like(x), t)[0]
        return Output(torch.cat([(mean_b - coef_xt * x) / coef_x0, var_b], dim=1))


def test_decoder_log_scale_survives_save_and_load_without_a_config_warning(tmp_path, caplog):
    """The stored log-std goes through save_pretrained / from_pretrained unchanged, and AutoencoderKL does not warn
    about an unexpected config attribute on load (a private key); a legacy public key is still read."""
    import json
    import logging

    from diffusers.utils import logging as diffusers_logging

    vae = tiny_vae()
    assert get_decoder_log_scale(vae) is None
    set_decoder_log_scale(vae, -1.75)
    vae.save_pretrained(tmp_path / "vae")
    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            loaded = AutoencoderKL.from_pretrained(tmp_path / "vae")
    finally:
        diffusers_logging.disable_propagation()
    assert get_decoder_log_scale(loaded) == -1.75
    assert not [r for r in caplog.records if "not expected" in r.getMessage()]
    config_path = tmp_path / "vae" / "config.json"
    config = json.loads(config_path.read_text())
    config["decoder_log_scale"] = config.pop("_decoder_log_scale")
    config_path.write_text(json.dumps(config))
    assert get_decoder_log_scale(AutoencoderKL.from_pretrained(tmp_path / "vae")) == -1.75


def test_latent_bound_change_of_variables_for_the_latent_scale():
    """Multiplying s by k, with the diffusion prior pushed forward so that p_theta(z) is the same distribution in z
    (see PushforwardModel), must leave every KL term and the reconstruction unchanged, shift the continuous decoder
    term by d log k nats, the Jacobian term by -d log k, and hence the total by exactly the (parameter-free) prior
    term difference L_T^B - L_T^A."""
    k = 2.0
    vae_a = tiny_vae()
    set_latent_scale(vae_a, 0.8)
    set_decoder_log_scale(vae_a, -2.5)
    vae_b = copy.deepcopy(vae_a)
    set_latent_scale(vae_b, 0.8 * k)
    scheduler_a = GaussianDDPMScheduler(
        num_train_timesteps=20,
        beta_start=1e-3,
        beta_end=0.2,
        prediction_type="sample",
        variance_type="learned",
        clip_sample=False,
    )
    scheduler_b = _rescaled_scheduler(scheduler_a, k)
    model_a = GaussianOracle(scheduler_a, 0.5)
    model_b = PushforwardModel(model_a, scheduler_a, scheduler_b, k)
    images = small_data(n=3, shape=(3, 8, 8))
    a = bits_per_dim(model_a, scheduler_a, images, vae=vae_a, generator=torch.Generator().manual_seed(0))
    b = bits_per_dim(model_b, scheduler_b, images, vae=vae_b, generator=torch.Generator().manual_seed(0))
    d, to_nats = a.num_latent_dims, a.num_dims * math.log(2)
    assert d == 2 * 4 * 4 and a.num_dims == 3 * 8 * 8
    assert not a.decoder_log_scale_fitted and a.decoder_log_scale == -2.5
    assert torch.allclose(a.reconstruction_bpd, b.reconstruction_bpd, rtol=0, atol=1e-12)
    assert torch.allclose(a.timestep_bpd, b.timestep_bpd, rtol=0, atol=1e-8)
    assert torch.allclose(
        (b.decoder_bpd - a.decoder_bpd) * to_nats, torch.full((3,), d * math.log(k), dtype=torch.float64), atol=1e-6
    )
    assert torch.allclose(
        (b.log_scale_bpd - a.log_scale_bpd) * to_nats, torch.full((3,), -d * math.log(k), dtype=torch.float64)
    )
    prior_shift = (b.prior_bpd - a.prior_bpd) * to_nats
    latent_shift = (b.latent_prior_bpd - a.latent_prior_bpd) * to_nats
    assert torch.allclose(latent_shift, d * math.log(k) + prior_shift, atol=1e-6)
    assert torch.allclose((b.total_nats - a.total_nats), prior_shift, atol=1e-6)
    # the parts add up, and the Jacobian term is -d log s
    for out, s in ((a, 0.8), (b, 0.8 * k)):
        parts = out.reconstruction_bpd + out.posterior_log_prob_bpd + out.latent_prior_bpd + out.log_scale_bpd
        assert torch.allclose(out.bpd, parts, rtol=1e-12)
        assert torch.allclose(out.log_scale_bpd, torch.full((3,), -d * math.log(s) / to_nats, dtype=torch.float64))
        assert out.latent_scale == pytest.approx(s)


def test_latent_bound_fits_the_decoder_scale_when_none_is_stored():
    vae = tiny_vae()
    set_latent_scale(vae, 1.3)
    scheduler = GaussianDDPMScheduler(num_train_timesteps=10, beta_end=0.3, clip_sample=False)
    images = small_data(n=4, shape=(3, 8, 8)).float()
    out = bits_per_dim(
        GaussianOracle(scheduler, 1.0),
        scheduler,
        images,
        vae=vae,
        batch_size=3,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.decoder_log_scale_fitted and "fitted" in out.note
    # z is drawn first, so the same seed gives the same z as fit_decoder_log_scale
    fitted = fit_decoder_log_scale(vae, images, generator=torch.Generator().manual_seed(0))
    assert out.decoder_log_scale == pytest.approx(fitted, abs=1e-6)
    assert torch.isfinite(out.bpd).all() and out.bpd.shape == (4,)
    # E_q[log q(z | x)] is the exact negative entropy of the diagonal Gaussian
    with torch.no_grad():
        logvar = vae.encode(images).latent_dist.logvar.double()
    neg_entropy = -0.5 * (math.log(2 * math.pi) + 1 + logvar).sum((1, 2, 3))
    assert torch.allclose(out.posterior_log_prob_bpd, neg_entropy / (out.num_dims * math.log(2)), rtol=1e-6)
    chunked = bits_per_dim(
        GaussianOracle(scheduler, 1.0), scheduler, images, vae=vae, generator=torch.Generator().manual_seed(0)
    )
    # the float32 vae sees other batch sizes, so agreement is to float32 rounding only
    assert torch.allclose(out.bpd, chunked.bpd, rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="scaling_factor"):
        vae.register_to_config(scaling_factor=0.0)
        bits_per_dim(GaussianOracle(scheduler, 1.0), scheduler, images, vae=vae)


def test_get_latent_scale_reads_and_checks_the_vae_config():
    vae = AutoencoderKL(
        in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,), latent_channels=2, norm_num_groups=4, sample_size=8,
    )  # fmt: skip
    set_latent_scale(vae, 0.37)
    assert get_latent_scale(vae) == 0.37
    for bad in (0.0, -1.0, float("nan"), None):
        vae.register_to_config(scaling_factor=bad)
        with pytest.raises(ValueError, match=r"scaling_factor=.*positive number"):
            get_latent_scale(vae)
    vae.register_to_config(scaling_factor=0.5, shift_factor=0.1)
    with pytest.raises(ValueError, match="shift_factor=0.1 is not supported"):
        get_latent_scale(vae)
    vae.register_to_config(shift_factor=None)
    assert get_latent_scale(vae) == 0.5
    with pytest.raises(ValueError, match="must be a diffusers.AutoencoderKL"):
        get_latent_scale(torch.nn.Linear(2, 2))
