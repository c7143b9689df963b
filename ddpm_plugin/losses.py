# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""Training losses of a DDPM (docs/maths.md [SIMPLE], [ELBO]), built from the same scheduler quantities and the same bound terms as
`ddpm_plugin.likelihood`, so training and evaluation cannot disagree.

- `simple_loss`: L_simple, Ho (14), with the target of the scheduler's prediction type and optional min-SNR-gamma
  weighting (Hang et al. 2023, arXiv 2303.09556).
- `vlb_loss`: the per-sample term L_{t-1} (or L_0 at t = 0) of the bound in bits/dim, with the stop-gradient on the
  mean of ND section 3.1, so that only the learned variance is trained by it.
- `hybrid_loss`: ND's L_hybrid = L_simple + lambda L_vlb, lambda = 0.001.
"""

from __future__ import annotations

import math
import weakref
from typing import Literal

import torch

from .likelihood import vb_terms

REDUCTIONS = ("mean", "sum", "none")
# full-chain copies of schedulers whose current chain is a respaced one (set_timesteps for sampling)
_FULL_CHAIN_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction={reduction!r} is not supported; choose one of {REDUCTIONS}.")


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all but the batch dimension: `(batch_size, ...)` -> `(batch_size,)`."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def _check_timesteps(timesteps: torch.Tensor, batch: int, scheduler) -> torch.Tensor:
    timesteps = torch.as_tensor(timesteps).reshape(-1)
    if timesteps.shape[0] != batch:
        raise ValueError(f"timesteps has {timesteps.shape[0]} entries for a batch of {batch}; give one per sample.")
    num_train = scheduler.config.num_train_timesteps
    # range check on the CPU only: on an accelerator it would synchronise every training step
    if timesteps.device.type == "cpu" and (int(timesteps.min()) < 0 or int(timesteps.max()) >= num_train):
        raise ValueError(
            f"timesteps must lie in [0, {num_train}), got [{int(timesteps.min())}, {int(timesteps.max())}]."
        )
    return timesteps


def _full_chain(scheduler):
    """The scheduler itself when its chain is all T steps (the training process), else a cached deep copy set to it;
    the user's scheduler is never modified."""
    num_train = scheduler.config.num_train_timesteps
    if len(scheduler.timesteps) == num_train:
        return scheduler
    full = _FULL_CHAIN_COPIES.get(scheduler)
    if full is None:
        full = scheduler.chain_copy()
        _FULL_CHAIN_COPIES[scheduler] = full
    return full


def snr(timesteps: torch.Tensor, scheduler) -> torch.Tensor:
    """SNR(t) = alpha_bar_t / (1 - alpha_bar_t) at `timesteps` `(batch_size,)`, float64, from the scheduler's
    float64 `alphas_cumprod_f64`."""
    timesteps = torch.as_tensor(timesteps).reshape(-1).long()
    alpha_prod = scheduler.alphas_cumprod_f64.to(timesteps.device)[timesteps]
    return alpha_prod / (1.0 - alpha_prod)


def min_snr_weights(timesteps: torch.Tensor, scheduler, snr_gamma: float) -> torch.Tensor:
    """
    Min-SNR-gamma loss weights (Hang et al. 2023, eq. (8) and section 3.4) for the scheduler's prediction type, per
    sample `(batch_size,)` float64: min(SNR, gamma) / SNR for epsilon (the eps-MSE is SNR times the x_0-MSE),
    min(SNR, gamma) / (SNR + 1) for v_prediction, min(SNR, gamma) for sample. At SNR = 0 (zero-terminal-SNR
    schedules) the epsilon weight takes its limit 1.
    """
    if isinstance(snr_gamma, bool) or not isinstance(snr_gamma, int | float) or not snr_gamma > 0:
        raise ValueError(f"snr_gamma={snr_gamma!r} must be a positive number (Hang et al. use 5) or None.")
    ratio = snr(timesteps, scheduler)
    clipped = ratio.clamp(max=float(snr_gamma))
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return torch.where(ratio > 0, clipped / ratio.clamp(min=1e-300), torch.ones_like(ratio))
    if prediction_type == "v_prediction":
        return clipped / (ratio + 1.0)
    if prediction_type == "sample":
        return clipped
    raise ValueError(f"prediction_type={prediction_type!r} has no min-SNR weighting.")


def prediction_target(
    original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, scheduler
) -> torch.Tensor:
    """What the network regresses for the scheduler's prediction type: eps (Ho (14)), x_0, or
    v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (`scheduler.get_velocity`)."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return original_samples
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(original_samples, noise, timesteps)
    raise ValueError(f"prediction_type={prediction_type!r} is not supported.")


def simple_loss(
    model_output: torch.Tensor,
    original_samples: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    scheduler,
    *,
    snr_gamma: float | None = None,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> torch.Tensor:
    """
    L_simple, Ho (14) and Algorithm 1: the mean squared error between the network's prediction and its target
    (by `scheduler.config.prediction_type`), averaged over dimensions per sample, optionally min-SNR-gamma weighted.

    Args:
        model_output (`torch.Tensor` of shape `(batch_size, num_channels or 2 * num_channels, height, width)`): the
            network output at x_t = `scheduler.add_noise(original_samples, noise, timesteps)`; the variance channels
            of learned variances are ignored here.
        original_samples (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`): x_0.
        noise (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`): eps.
        timesteps (`torch.Tensor` of shape `(batch_size,)`): t in [0, T).
        scheduler ([`GaussianDDPMScheduler`]): the process.
        snr_gamma (`float`, *optional*): gamma of min-SNR weighting (see [`min_snr_weights`]); None for none.
        reduction (`str`): `"mean"` over the batch (default), `"sum"` or `"none"` (per sample, `(batch_size,)`).

    Returns:
        `torch.Tensor`: a scalar, or `(batch_size,)` for `reduction="none"`.
    """
    timesteps = _check_timesteps(timesteps, original_samples.shape[0], scheduler)
    prediction, _ = scheduler._split_model_output(model_output, original_samples)
    target = prediction_target(original_samples, noise, timesteps.to(original_samples.device), scheduler)
    dtype = torch.promote_types(prediction.dtype, torch.float32)
    loss = _mean_flat((prediction.to(dtype) - target.to(dtype)) ** 2)  # (B,)
    if snr_gamma is not None:
        loss = loss * min_snr_weights(timesteps, scheduler, snr_gamma).to(loss.device, dtype)
    return _reduce(loss, reduction)


def vlb_loss(
    model_output: torch.Tensor,
    original_samples: torch.Tensor,
    noisy_samples: torch.Tensor,
    timesteps: torch.Tensor,
    scheduler,
    *,
    decoder: Literal["discretized", "continuous"] = "discretized",
) -> torch.Tensor:
    """
    The term of the variational bound at each sample's timestep, in bits/dim: L_{t-1} = KL(q(x_{t-1} | x_t, x_0) ||
    p_theta(x_{t-1} | x_t)) for t > 0 and the decoder NLL L_0 at t = 0 (Ho (5), (13)), from
    `ddpm_plugin.likelihood.vb_terms` (the function `bits_per_dim` sums), on the full T-step chain.

    Stop-gradient as in ND section 3.1 ("we apply a stop-gradient to the mu_theta output for the L_vlb term"): the
    prediction channels of `model_output` are detached, so this loss trains only the variance channels of
    `learned` / `learned_range` models (for a fixed variance it carries no gradient at all).

    Args:
        model_output (`torch.Tensor` of shape `(batch_size, num_channels or 2 * num_channels, height, width)`).
        original_samples (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`): x_0, on the 8-bit
            grid for the discretized decoder.
        noisy_samples (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`): x_t.
        timesteps (`torch.Tensor` of shape `(batch_size,)`): t in [0, T).
        scheduler ([`GaussianDDPMScheduler`]): the process (its current sampling chain does not matter).
        decoder (`str`): `"discretized"` (pixels, Ho (13)) or `"continuous"` (latents).

    Returns:
        `torch.Tensor` of shape `(batch_size,)`, bits per dimension (float32, or float64 for float64 inputs).
    """
    timesteps = _check_timesteps(timesteps, original_samples.shape[0], scheduler).to(original_samples.device)
    full = _full_chain(scheduler)
    prediction, variance = full._split_model_output(model_output, noisy_samples)
    frozen = prediction.detach() if variance is None else torch.cat([prediction.detach(), variance], dim=1)
    terms = vb_terms(frozen, original_samples, noisy_samples, timesteps, full, decoder=decoder)  # nats, float64
    dtype = torch.promote_types(model_output.dtype, torch.float32)
    return (_mean_flat(terms) / math.log(2.0)).to(dtype)


def hybrid_loss(
    model_output: torch.Tensor,
    original_samples: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    scheduler,
    *,
    noisy_samples: torch.Tensor | None = None,
    lambda_vlb: float = 0.001,
    snr_gamma: float | None = None,
    decoder: Literal["discretized", "continuous"] = "discretized",
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> torch.Tensor:
    """
    ND's hybrid objective L_hybrid = L_simple + lambda L_vlb (ND section 3.1, lambda = 0.001), per sample:
    `simple_loss + lambda_vlb * T * vlb_loss`.

    L_vlb = L_0 + ... + L_T is estimated from one uniformly drawn t by T * L_t, hence the factor T =
    `num_train_timesteps`; with lambda = 0.001 this is exactly improved-diffusion's `training_losses`
    (`terms["vb"] *= self.num_timesteps / 1000.0` for the hybrid / rescaled-MSE loss, the vb term in bits/dim).

    Args:
        noisy_samples (`torch.Tensor`, *optional*): x_t; recomputed with `scheduler.add_noise` when not given.
        lambda_vlb (`float`): the weight lambda of L_vlb (0.001 in ND).
        Others as in [`simple_loss`] and [`vlb_loss`].

    Returns:
        `torch.Tensor`: a scalar, or `(batch_size,)` for `reduction="none"`.
    """
    if isinstance(lambda_vlb, bool) or not isinstance(lambda_vlb, int | float) or lambda_vlb < 0:
        raise ValueError(f"lambda_vlb={lambda_vlb!r} must be a non-negative number (ND use 0.001).")
    if noisy_samples is None:
        noisy_samples = scheduler.add_noise(original_samples, noise, torch.as_tensor(timesteps).reshape(-1))
    simple = simple_loss(
        model_output, original_samples, noise, timesteps, scheduler, snr_gamma=snr_gamma, reduction="none"
    )
    vlb = vlb_loss(model_output, original_samples, noisy_samples, timesteps, scheduler, decoder=decoder)
    num_train = scheduler.config.num_train_timesteps
    return _reduce(simple + lambda_vlb * num_train * vlb.to(simple.dtype), reduction)
