"""Training losses: targets per prediction type, min-SNR weights, the L_vlb term against Ho (12) and the decoder in
closed form, its stop-gradient, the hybrid sum, and agreement with bits_per_dim's terms."""

import math

import numpy as np
import pytest
import torch

from ddpm_plugin import GaussianDDPMScheduler, bits_per_dim
from ddpm_plugin.losses import hybrid_loss, min_snr_weights, simple_loss, vlb_loss

T = 1000
BETAS = np.linspace(1e-4, 0.02, T)  # Ho's linear schedule, by hand
ABAR = np.cumprod(1 - BETAS)


def batch(seed=0, n=4, shape=(3, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, 256, (n, *shape), generator=g).double() / 127.5 - 1
    noise = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    return x0, noise


def col(values, like):
    return torch.as_tensor(values, dtype=like.dtype).view(-1, *([1] * (like.ndim - 1)))


# ------------------------------------------------------------------------------------------------ L_simple
def test_simple_loss_targets_by_prediction_type():
    x0, noise = batch()
    timesteps = torch.tensor([0, 10, 500, 999])
    a = col(np.sqrt(ABAR[timesteps.numpy()]), x0)
    b = col(np.sqrt(1 - ABAR[timesteps.numpy()]), x0)
    targets = {"epsilon": noise, "sample": x0, "v_prediction": a * noise - b * x0}  # v by hand
    for prediction_type, target in targets.items():
        scheduler = GaussianDDPMScheduler(prediction_type=prediction_type)
        assert float(simple_loss(target, x0, noise, timesteps, scheduler)) < 1e-20
        per_sample = simple_loss(target + 0.5, x0, noise, timesteps, scheduler, reduction="none")
        assert torch.allclose(per_sample, torch.full((4,), 0.25, dtype=torch.float64))
        zero = simple_loss(torch.zeros_like(x0), x0, noise, timesteps, scheduler, reduction="none")
        assert torch.allclose(zero, (target**2).mean(dim=(1, 2, 3)), rtol=1e-12)
        total = simple_loss(torch.zeros_like(x0), x0, noise, timesteps, scheduler, reduction="sum")
        assert torch.allclose(total, zero.sum())
    # learned variances: the variance channels are ignored by L_simple
    scheduler = GaussianDDPMScheduler(variance_type="learned_range")
    out = torch.cat([noise, torch.randn_like(noise)], dim=1)
    assert float(simple_loss(out, x0, noise, timesteps, scheduler)) < 1e-20


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weights_by_hand(prediction_type):
    x0, noise = batch()
    timesteps = torch.tensor([0, 50, 300, 999])
    snr = ABAR[timesteps.numpy()] / (1 - ABAR[timesteps.numpy()])
    gamma = 5.0
    expected = {
        "epsilon": np.minimum(snr, gamma) / snr,
        "v_prediction": np.minimum(snr, gamma) / (snr + 1),
        "sample": np.minimum(snr, gamma),
    }[prediction_type]
    scheduler = GaussianDDPMScheduler(prediction_type=prediction_type)
    assert np.allclose(min_snr_weights(timesteps, scheduler, gamma).numpy(), expected, rtol=1e-12)
    output = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    plain = simple_loss(output, x0, noise, timesteps, scheduler, reduction="none")
    weighted = simple_loss(output, x0, noise, timesteps, scheduler, snr_gamma=gamma, reduction="none")
    assert np.allclose(weighted.numpy(), plain.numpy() * expected, rtol=1e-12)
    assert torch.allclose(
        simple_loss(output, x0, noise, timesteps, scheduler, snr_gamma=gamma), weighted.mean(), rtol=1e-12
    )


def test_min_snr_epsilon_weight_at_zero_terminal_snr_is_its_limit():
    scheduler = GaussianDDPMScheduler(rescale_betas_zero_snr=True)
    weights = min_snr_weights(torch.tensor([998, 999]), scheduler, 5.0)
    assert float(scheduler.alphas_cumprod_f64[-1]) < 1e-20
    assert torch.isfinite(weights).all() and float(weights[1]) == 1.0 and abs(float(weights[0]) - 1.0) < 1e-12


# ------------------------------------------------------------------------------------------------ L_vlb
def test_vlb_loss_is_ho_12_for_a_fixed_variance():
    """With sigma_t^2 = beta_tilde_t both Gaussians share the variance, so L_{t-1} is exactly Ho (12):
    beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t)) ||eps - eps_theta||^2."""
    x0, noise = batch()
    timesteps = torch.tensor([1, 7, 400, 999])
    scheduler = GaussianDDPMScheduler(clip_sample=False)
    x_t = scheduler.add_noise(x0, noise, timesteps)
    delta = 0.1 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = vlb_loss(noise + delta, x0, x_t, timesteps, scheduler)
    t = timesteps.numpy()
    beta, abar, abar_prev = BETAS[t], ABAR[t], ABAR[t - 1]
    sigma2 = (1 - abar_prev) / (1 - abar) * beta
    weight = beta**2 / (2 * sigma2 * (1 - beta) * (1 - abar))
    expected = weight * (delta**2).mean(dim=(1, 2, 3)).numpy() / math.log(2)
    assert got.shape == (4,) and got.dtype == torch.float64
    assert np.allclose(got.numpy(), expected, rtol=1e-8)


def test_vlb_loss_decoder_term_in_closed_form():
    """At t = 0 with the exact noise, x0_hat = x_0 and the decoder mean is x_0 itself; the decoder scale is the
    clipped sqrt(beta_tilde) of the next step, so an interior pixel has probability erf(h / (sigma sqrt 2)) and an
    edge pixel Phi(h / sigma), h = 1/255."""
    x0, noise = batch(n=3)
    x0[0, 0, 0, 0], x0[1, 0, 0, 0] = -1.0, 1.0  # edge pixels
    timesteps = torch.zeros(3, dtype=torch.long)
    scheduler = GaussianDDPMScheduler(clip_sample=False)
    x_t = scheduler.add_noise(x0, noise, timesteps)
    got = vlb_loss(noise, x0, x_t, timesteps, scheduler)
    sigma = math.sqrt((1 - ABAR[0]) / (1 - ABAR[1]) * BETAS[1])
    h = 1 / 255
    interior = -math.log(math.erf(h / (sigma * math.sqrt(2))))
    edge = -math.log(0.5 * (1 + math.erf(h / (sigma * math.sqrt(2)))))
    is_edge = (x0.abs() > 0.999).double()
    expected = (is_edge * edge + (1 - is_edge) * interior).mean(dim=(1, 2, 3)) / math.log(2)
    assert torch.allclose(got, expected, rtol=1e-9)


def test_vlb_loss_stops_the_gradient_of_the_mean():
    x0, noise = batch()
    timesteps = torch.tensor([0, 3, 200, 999])
    scheduler = GaussianDDPMScheduler(variance_type="learned_range")
    x_t = scheduler.add_noise(x0, noise, timesteps)
    out = torch.cat([noise + 0.1, torch.zeros_like(noise)], dim=1).requires_grad_(True)
    vlb_loss(out, x0, x_t, timesteps, scheduler).sum().backward()
    assert torch.equal(out.grad[:, :3], torch.zeros_like(noise))  # the mean learns nothing from L_vlb
    assert (out.grad[:, 3:].abs().sum(dim=(1, 2, 3)) > 0).all()  # the variance does, at every t
    # with a fixed variance nothing is left to learn from L_vlb
    fixed = GaussianDDPMScheduler()
    out = (noise + 0.1).requires_grad_(True)
    assert not vlb_loss(out, x0, x_t, timesteps, fixed).requires_grad


def test_vlb_loss_agrees_with_bits_per_dim_terms():
    """The same function serves training and evaluation: feeding vlb_loss the (x_t, t) that bits_per_dim drew
    reproduces every column of timestep_bpd and the decoder term."""
    scheduler = GaussianDDPMScheduler(num_train_timesteps=6, beta_end=0.3, variance_type="learned_range")
    x0, _ = batch(n=3, shape=(1, 3, 3))
    seen = []

    class Model(torch.nn.Module):
        def forward(self, x, t):
            out = torch.cat([0.3 * x, torch.tanh(x)], dim=1)
            seen.append((x.clone(), t.clone(), out))
            return out

    result = bits_per_dim(Model(), scheduler, x0, generator=torch.Generator().manual_seed(0))
    for i, (x_t, t, out) in enumerate(seen):
        vlb = vlb_loss(out, x0, x_t, t, scheduler)
        reference = result.decoder_bpd if int(t[0]) == 0 else result.timestep_bpd[:, i]
        assert torch.allclose(vlb, reference, rtol=1e-12), int(t[0])


def test_vlb_loss_uses_the_full_chain_whatever_the_sampling_chain():
    x0, noise = batch()
    timesteps = torch.tensor([0, 5, 21, 700])
    scheduler = GaussianDDPMScheduler(variance_type="learned_range")
    x_t = scheduler.add_noise(x0, noise, timesteps)
    out = torch.cat([noise + 0.05, 0.3 * torch.ones_like(noise)], dim=1)
    fresh = vlb_loss(out, x0, x_t, timesteps, scheduler)
    scheduler.set_timesteps(10)
    before = scheduler.timesteps.clone()
    assert torch.equal(vlb_loss(out, x0, x_t, timesteps, scheduler), fresh)
    assert torch.equal(scheduler.timesteps, before)


# ------------------------------------------------------------------------------------------------ hybrid
def test_hybrid_is_simple_plus_lambda_times_T_times_vlb():
    x0, noise = batch()
    timesteps = torch.tensor([0, 3, 200, 999])
    scheduler = GaussianDDPMScheduler(variance_type="learned_range")
    x_t = scheduler.add_noise(x0, noise, timesteps)
    out = torch.cat([noise + 0.1, 0.2 * torch.ones_like(noise)], dim=1)
    simple = simple_loss(out, x0, noise, timesteps, scheduler, snr_gamma=5.0, reduction="none")
    vlb = vlb_loss(out, x0, x_t, timesteps, scheduler)
    hybrid = hybrid_loss(out, x0, noise, timesteps, scheduler, snr_gamma=5.0, reduction="none")
    assert torch.allclose(hybrid, simple + 0.001 * 1000 * vlb, rtol=1e-12)  # improved-diffusion: vb * T / 1000
    given = hybrid_loss(out, x0, noise, timesteps, scheduler, noisy_samples=x_t, snr_gamma=5.0, lambda_vlb=0.01)
    assert torch.allclose(given, (simple + 0.01 * 1000 * vlb).mean(), rtol=1e-12)
    assert torch.allclose(
        hybrid_loss(out, x0, noise, timesteps, scheduler, lambda_vlb=0.0),
        simple_loss(out, x0, noise, timesteps, scheduler),
    )


def test_losses_reject_bad_arguments():
    x0, noise = batch()
    scheduler = GaussianDDPMScheduler()
    timesteps = torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="reduction"):
        simple_loss(noise, x0, noise, timesteps, scheduler, reduction="avg")
    with pytest.raises(ValueError, match="snr_gamma"):
        simple_loss(noise, x0, noise, timesteps, scheduler, snr_gamma=0.0)
    with pytest.raises(ValueError, match="one per sample"):
        simple_loss(noise, x0, noise, timesteps[:2], scheduler)
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        simple_loss(noise, x0, noise, torch.tensor([0, 1, 2, 1000]), scheduler)
    with pytest.raises(ValueError, match="channels"):
        vlb_loss(torch.cat([noise, noise], 1), x0, noise, timesteps, scheduler)
    with pytest.raises(ValueError, match="lambda_vlb"):
        hybrid_loss(noise, x0, noise, timesteps, scheduler, lambda_vlb=-1.0)
