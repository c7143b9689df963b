# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""The exact variational bound of a DDPM in bits per dimension (docs/maths.md [ELBO], [BPD]), and of the VAE latent variant
(docs/maths.md [LAT2], the LSGM bound).

This module is the one place for the terms of the bound: `normal_kl` (the L_{t-1} of Ho (5)),
`discretized_gaussian_log_likelihood` (the decoder L_0 of Ho (13)), `gaussian_log_likelihood` (the continuous decoder
of latent models) and `vb_terms`, which assembles them from the scheduler's `q_posterior_mean_variance` and
`p_mean_variance`. The training losses (`ddpm_plugin.losses`) call the same functions, so training and evaluation
cannot disagree.

Equation numbers: "Ho (n)" is Ho et al. 2020 (arXiv 2006.11239), "ND (n)" is Nichol & Dhariwal 2021
(arXiv 2102.09672). Timesteps follow diffusers: 0..T-1, where t = 0 is the decoder step L_0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ._utils import (
    decode_means,
    encode_moments,
    get_decoder_log_scale,
    get_latent_scale,
    placement,
    randn_float64,
)

# half the width of one of the 256 bins of 8-bit data scaled to [-1, 1]
_HALF_BIN = 1.0 / 255.0
# how far from an 8-bit level (in units of levels) a pixel may lie, per dtype of the given images
_GRID_TOLERANCE = {torch.float16: 0.1, torch.float32: 1e-3, torch.float64: 1e-6}


# ---------------------------------------------------------------------------------------------------- the terms
def normal_kl(
    mean1: torch.Tensor | float,
    logvar1: torch.Tensor | float,
    mean2: torch.Tensor | float,
    logvar2: torch.Tensor | float,
) -> torch.Tensor:
    """
    KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) per element, in nats (broadcasting shapes).

    The L_{t-1} of Ho (5) with q(x_{t-1} | x_t, x_0) as the first argument and p_theta(x_{t-1} | x_t) as the second;
    with a fixed variance it is Ho (8) plus a constant.
    """
    tensors = [v for v in (mean1, logvar1, mean2, logvar2) if isinstance(v, torch.Tensor)]
    if not tensors:
        raise ValueError("normal_kl needs at least one tensor argument.")
    ref = tensors[0]
    logvar1, logvar2 = (torch.as_tensor(v, dtype=ref.dtype, device=ref.device) for v in (logvar1, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _log_diff_ndtr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Phi(a) - Phi(b)) for a > b, both on the lower tail of the normal CDF (where log_ndtr is accurate)."""
    log_a = torch.special.log_ndtr(a)
    log_b = torch.special.log_ndtr(b)
    # log(exp(log_a) - exp(log_b)) = log_a + log(1 - exp(log_b - log_a)), the second factor via expm1
    return log_a + torch.log(-torch.expm1(log_b - log_a))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor | float
) -> torch.Tensor:
    """
    Log-probability, per element and in nats, of 8-bit data `x` scaled to [-1, 1] under the discretized Gaussian
    decoder of Ho (13): the mass of N(means, exp(log_scales)^2) on the pixel's bin [x - 1/255, x + 1/255], with the
    bin of x = -1 extended to -inf and that of x = 1 to +inf, so that the 256 probabilities sum to one.

    Computed in float64 with `torch.special.log_ndtr` and a log-difference of CDFs taken on the lower tail of the
    normal (the bin is mirrored when it lies right of the mean), so it stays finite and accurate for tiny scales and
    for bins far out in the tails.

    Args:
        x (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`): values on the 256-level grid.
        means (`torch.Tensor`, broadcastable to `x`): the decoder mean mu_theta(x_1, 1).
        log_scales (`torch.Tensor` or `float`, broadcastable to `x`): log sigma_1 (half the log-variance).

    Returns:
        `torch.Tensor` of float64, the broadcast shape of the inputs.
    """
    x = x.double()
    means = means.double()
    log_scales = torch.as_tensor(log_scales, dtype=torch.float64, device=x.device)
    inv_scale = torch.exp(-log_scales)
    centered = x - means
    upper = (centered + _HALF_BIN) * inv_scale  # standardised right edge of the bin
    lower = (centered - _HALF_BIN) * inv_scale  # standardised left edge
    # Phi(upper) - Phi(lower) = Phi(-lower) - Phi(-upper): use the form whose arguments are on the lower tail
    mirrored = (upper + lower) > 0
    log_mid = _log_diff_ndtr(torch.where(mirrored, -lower, upper), torch.where(mirrored, -upper, lower))
    log_left = torch.special.log_ndtr(upper)  # x = -1: mass of (-inf, -1 + 1/255]
    log_right = torch.special.log_ndtr(-lower)  # x = +1: mass of [1 - 1/255, inf)
    return torch.where(x < -0.999, log_left, torch.where(x > 0.999, log_right, log_mid))


def gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor | float) -> torch.Tensor:
    """Log-density of N(means, exp(log_scales)^2) at x, per element, in nats (float64): the continuous decoder that
    replaces Ho (13) for latents, which are not 8-bit (docs/maths.md [LAT2])."""
    x = x.double()
    means = means.double()
    log_scales = torch.as_tensor(log_scales, dtype=torch.float64, device=x.device)
    return -0.5 * math.log(2 * math.pi) - log_scales - 0.5 * ((x - means) * torch.exp(-log_scales)) ** 2


def vb_terms(
    model_output: torch.Tensor,
    original_samples: torch.Tensor,
    noisy_samples: torch.Tensor,
    timesteps: torch.Tensor | int,
    scheduler,
    *,
    decoder: Literal["discretized", "continuous"] = "discretized",
    decoder_step: bool | None = None,
) -> torch.Tensor:
    """
    The term of the bound that a step t -> t_prev of the scheduler's current chain contributes, per element, in nats
    (float64): L_{t-1} = KL(q(x_prev | x_t, x_0) || p_theta(x_prev | x_t)) of Ho (5) for an inner step, and
    L_0 = -log p_theta(x_0 | x_t) at the chain's last step (the decoder step, where the posterior variance is 0).

    Both distributions come from the scheduler (`q_posterior_mean_variance`, `p_mean_variance`), evaluated in
    float64 so the x_t parts of the two means cancel exactly.

    Args:
        model_output (`torch.Tensor` of shape `(batch_size, num_channels or 2 * num_channels, height, width)`):
            the network output at (x_t, t), variance channels included for learned variances.
        original_samples (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`): x_0.
        noisy_samples (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`): x_t.
        timesteps (`torch.Tensor` of shape `(batch_size,)` or `int`): t, in the scheduler's current chain.
        scheduler ([`GaussianDDPMScheduler`]): the process; its current chain decides which step is the decoder.
        decoder (`str`): `"discretized"` (Ho (13), 8-bit pixels) or `"continuous"` (a Gaussian density, latents).
        decoder_step (`bool`, *optional*): whether all of `timesteps` are the decoder step; `None` decides per sample
            (the posterior variance is exactly 0 at the decoder step and only there).

    Returns:
        `torch.Tensor` of float64 and shape `(batch_size, num_channels, height, width)`, nats per element.
    """
    if decoder not in ("discretized", "continuous"):
        raise ValueError(f"decoder={decoder!r} is not supported; choose 'discretized' or 'continuous'.")
    x_0 = original_samples.double()
    x_t = noisy_samples.double()
    reverse = scheduler.p_mean_variance(model_output.double(), x_t, timesteps)
    true_mean, true_variance, true_log_variance = scheduler.q_posterior_mean_variance(x_0, x_t, timesteps)

    def decoder_nll() -> torch.Tensor:
        log_likelihood = discretized_gaussian_log_likelihood if decoder == "discretized" else gaussian_log_likelihood
        return -log_likelihood(x_0, reverse.mean, 0.5 * reverse.log_variance)

    if decoder_step is True:
        return decoder_nll()
    kl = normal_kl(true_mean, true_log_variance, reverse.mean, reverse.log_variance)
    if decoder_step is False:
        return kl
    return torch.where(true_variance == 0, decoder_nll(), kl)


@torch.no_grad()
def fit_discretized_log_scale(
    images: torch.Tensor, means: torch.Tensor, low: float = -12.0, high: float = 3.0
) -> float:
    """
    Maximum-likelihood log-std of the discretized Gaussian p(x | mu) (Ho (13) over the 256 levels, docs/maths.md
    [L0]) with a single scalar scale: a grid search over [low, high] followed by a golden-section refinement of the
    best bracket. `images` and `means` have the same shape `(batch_size, num_channels, height, width)`.
    """
    images = images.to(means.device)

    def log_likelihood(log_scale: float) -> float:
        return float(discretized_gaussian_log_likelihood(images, means, log_scale).mean())

    grid = torch.linspace(low, high, 61).tolist()
    values = [log_likelihood(v) for v in grid]
    best = max(range(len(grid)), key=values.__getitem__)
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = log_likelihood(c), log_likelihood(d)
    while b - a > 1e-6:
        if fc > fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = log_likelihood(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = log_likelihood(d)
    return (a + b) / 2


# ---------------------------------------------------------------------------------------------------- the result
@dataclass
class BitsPerDimOutput:
    """
    The variational bound -log p(x) <= L of docs/maths.md [ELBO] and [LAT2], per image, in bits per (pixel) dimension.

    `bpd = prior_bpd + timestep_bpd.sum(1) + decoder_bpd` for a pixel model; for a latent model
    `bpd = reconstruction_bpd + posterior_log_prob_bpd + latent_prior_bpd + log_scale_bpd`, where
    `latent_prior_bpd = prior_bpd + timestep_bpd.sum(1) + decoder_bpd` is the diffusion bound on -log p_theta(z_0).
    All tensors are float64 on the CPU; every `*_bpd` is nats / (D ln 2) with D = C * H * W of the pixel images.

    Args:
        bpd (`torch.Tensor` of shape `(batch_size,)`): the bound.
        prior_bpd (`torch.Tensor` of shape `(batch_size,)`): L_T = KL(q(x_T | x_0) || N(0, I)), T the chain's first
            timestep.
        timestep_bpd (`torch.Tensor` of shape `(batch_size, len(timesteps))`): the KL terms L_{t-1}, Ho (5).
        decoder_bpd (`torch.Tensor` of shape `(batch_size,)`): L_0 = -log p_theta(x_0 | x_t) at the last step.
        timesteps (`list[int]`): the chain timesteps t of the columns of `timestep_bpd` (descending).
        decoder_timestep (`int`): the chain's last timestep, where the decoder term is taken (0 for the full chain).
        strided (`bool`): True when the chain has fewer than T steps; the bound is then that of the respaced model
            (ND section 4), an estimate of the full model's.
        total_nats (`torch.Tensor` of shape `(batch_size,)`): the bound in nats per image.
        num_dims (`int`): D = C * H * W.
        note (`str`): how the number was obtained (chain, decoder scale).
        reconstruction_bpd, posterior_log_prob_bpd, latent_prior_bpd, log_scale_bpd (`torch.Tensor`, *optional*):
            latent models only: -log p_psi(x | z); E_q[log q_phi(z | x)] = -H[q_phi(z | x)] (exact, a negative
            number for a broad posterior); the diffusion bound on -log p_theta(z_0); the change of variables
            -d log s. Each of shape `(batch_size,)`.
        latent_scale (`float`, *optional*): s, from `vae.config.scaling_factor`.
        num_latent_dims (`int`, *optional*): d, the latent dimensions per image.
        decoder_log_scale (`float`, *optional*): the log-std of the pixel decoder p_psi(x | z).
        decoder_log_scale_fitted (`bool`, *optional*): True when it was fitted on the given images (none stored
            with `ddpm_plugin.latent.set_decoder_log_scale`), which makes the bound slightly optimistic for those
            images.
    """

    bpd: torch.Tensor
    prior_bpd: torch.Tensor
    timestep_bpd: torch.Tensor
    decoder_bpd: torch.Tensor
    timesteps: list[int]
    decoder_timestep: int
    strided: bool
    total_nats: torch.Tensor
    num_dims: int
    note: str = ""
    reconstruction_bpd: torch.Tensor | None = None
    posterior_log_prob_bpd: torch.Tensor | None = None
    latent_prior_bpd: torch.Tensor | None = None
    log_scale_bpd: torch.Tensor | None = None
    latent_scale: float | None = None
    num_latent_dims: int | None = None
    decoder_log_scale: float | None = None
    decoder_log_scale_fitted: bool | None = None


# ---------------------------------------------------------------------------------------------------- helpers
def check_images(images: torch.Tensor, *, on_grid: bool = True) -> torch.Tensor:
    """
    Validates 8-bit images scaled to [-1, 1] of shape `(batch_size, num_channels, height, width)` and returns them
    as float64, snapped exactly onto the 256-level grid (when `on_grid`). Raises `ValueError` naming the problem.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor of shape (B, C, H, W), got {type(images).__name__}.")
    if images.ndim != 4:
        raise ValueError(
            f"images must have shape (batch_size, num_channels, height, width), got shape {tuple(images.shape)}."
        )
    if images.shape[0] == 0 or images.numel() == 0:
        raise ValueError(f"images is empty (shape {tuple(images.shape)}); give at least one image.")
    if not images.is_floating_point():
        raise ValueError(
            f"images have dtype {images.dtype}; pass floats scaled to [-1, 1] (for uint8 data: x / 127.5 - 1)."
        )
    if on_grid and images.dtype not in _GRID_TOLERANCE:
        raise ValueError(
            f"images of dtype {images.dtype} cannot hold the 256-level grid exactly; pass float16, float32 or float64."
        )
    x = images.detach().double()
    if not torch.isfinite(x).all():
        raise ValueError("images contain NaN or infinite values; they must be finite values in [-1, 1].")
    low, high = float(x.min()), float(x.max())
    tol = _GRID_TOLERANCE.get(images.dtype, 1e-3) / 127.5
    if low < -1.0 - tol or high > 1.0 + tol:
        raise ValueError(f"images must lie in [-1, 1] (8-bit data scaled by x / 127.5 - 1), got [{low}, {high}].")
    if not on_grid:
        return x
    levels = (x + 1.0) * 127.5
    snapped = levels.round()
    off = float((levels - snapped).abs().max())
    if off > _GRID_TOLERANCE[images.dtype]:
        raise ValueError(
            f"images are not on the 256-level grid of 8-bit data scaled to [-1, 1]: a value lies {off:.3g} levels "
            "from the nearest level k / 127.5 - 1 (k = 0..255). bits_per_dim needs the original 8-bit values "
            "(no resizing, blurring or dequantisation noise)."
        )
    return snapped / 127.5 - 1.0


def _model_output(unet, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    out = unet(sample, timesteps)
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, tuple | list):
        return out[0]
    return out


def _chain_scheduler(scheduler, num_timesteps: int | None):
    """A deep copy of the user's scheduler set to the full chain T-1..0, or to the respaced chain of
    `set_timesteps(num_timesteps)`; the user's scheduler is never modified."""
    if not all(hasattr(scheduler, name) for name in ("p_mean_variance", "q_posterior_mean_variance", "chain_copy")):
        raise ValueError(
            f"scheduler is a {type(scheduler).__name__}; bits_per_dim needs a GaussianDDPMScheduler (convert with "
            "GaussianDDPMScheduler.from_config(scheduler.config))."
        )
    num_train = scheduler.config.num_train_timesteps
    if num_timesteps is not None and (
        isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or not 1 <= num_timesteps <= num_train
    ):
        raise ValueError(f"num_timesteps={num_timesteps!r} must be an integer in [1, {num_train}] or None (all T).")
    return scheduler.chain_copy(num_timesteps)


@torch.no_grad()
def _diffusion_bound_nats(
    unet,
    scheduler,
    x_0: torch.Tensor,
    generator: torch.Generator | None,
    batch_size: int,
    model_dtype: torch.dtype,
    decoder: Literal["discretized", "continuous"],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    L_T, the L_{t-1} and L_0 of Ho (5) for every sample of `x_0` (float64, on the unet's device) along the
    scheduler's current chain, in nats summed over dimensions: shapes `(B,)`, `(B, n - 1)`, `(B,)`.

    Timesteps run in the outer loop and chunks of `batch_size` in the inner one; the noise of a step is drawn for the
    whole batch at once, so the result does not depend on `batch_size`. One unet call per chunk and step.
    """
    chain = [int(t) for t in scheduler.timesteps.tolist()]
    num_samples = x_0.shape[0]
    device = x_0.device
    dims = tuple(range(1, x_0.ndim))

    # L_T = KL(q(x_T | x_0) || N(0, I)), q(x_T | x_0) = N(sqrt(alpha_bar_T) x_0, (1 - alpha_bar_T) I), Ho (4)
    alpha_prod_first = float(scheduler.alphas_cumprod_f64[chain[0]])
    prior = normal_kl(math.sqrt(alpha_prod_first) * x_0, math.log1p(-alpha_prod_first), 0.0, 0.0).sum(dims)

    kl_terms = torch.zeros(num_samples, len(chain) - 1, dtype=torch.float64, device=device)
    decoder_term = torch.zeros(num_samples, dtype=torch.float64, device=device)
    for i, t in enumerate(chain):
        is_decoder = i == len(chain) - 1
        noise = randn_float64(x_0.shape, generator, device)  # (B, C, H, W), one draw per step for the whole batch
        for start in range(0, num_samples, batch_size):
            chunk = slice(start, start + batch_size)
            x_start = x_0[chunk]
            timesteps = torch.full((x_start.shape[0],), t, dtype=torch.long, device=device)
            x_t = scheduler.add_noise(x_start, noise[chunk], timesteps)  # Ho (4), float64
            model_output = _model_output(unet, x_t.to(model_dtype), timesteps)
            terms = vb_terms(
                model_output, x_start, x_t, timesteps, scheduler, decoder=decoder, decoder_step=is_decoder
            ).sum(dims)
            if is_decoder:
                decoder_term[chunk] = terms
            else:
                kl_terms[chunk, i] = terms
    return prior, kl_terms, decoder_term


# ---------------------------------------------------------------------------------------------------- entry point
@torch.no_grad()
def bits_per_dim(
    unet,
    scheduler,
    images: torch.Tensor,
    *,
    vae=None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    num_timesteps: int | None = None,
) -> BitsPerDimOutput:
    """
    The full variational bound of docs/maths.md [ELBO] (pixel model) or [LAT2] (latent model), in bits per dimension.

    Pixel model, Ho (5): `L = L_T + sum_{t>1} L_{t-1} + L_0` with
    - `L_T = KL(q(x_T | x_0) || N(0, I))`,
    - `L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))`, closed form between Gaussians, the posterior
      from `scheduler.q_posterior_mean_variance` and the model's mean and log-variance from
      `scheduler.p_mean_variance` (so every `variance_type` and `prediction_type`, and the scheduler's clipping of
      x0_hat, are honoured exactly as the sampler uses them),
    - `L_0 = -log p_theta(x_0 | x_1)`, the discretized Gaussian decoder of Ho (13) (the mass of N(mu, sigma^2) on
      [x - 1/255, x + 1/255], edge bins extended to -inf / +inf).
    Each term is estimated with one x_t ~ q(x_t | x_0) per timestep and image; `bpd = L / (D ln 2)`, D = C * H * W.

    Decoder scale convention: the posterior variance beta_tilde of the first step is 0, so `fixed_small` (and the
    lower end of `learned_range`) use the clipped log-variance at the decoder step, i.e. the value of the chain's
    next step, as improved-diffusion's `posterior_log_variance_clipped` does; `fixed_large` uses beta_1. This is
    the scheduler's `p_mean_variance`, the same distribution its `step` samples from.

    Latent model (`vae` given), the LSGM bound of docs/maths.md [LAT2], in *pixel* bits/dim:
    `-log p(x) <= E_q[-log p_psi(x | z)] + E_q[log q_phi(z | x)] - E_q[log p_theta(z)]`, one sample
    z ~ q_phi(z | x) per image, z_0 = s z with s = `vae.config.scaling_factor`,
    `-log p_theta(z) = -log p_theta(z_0) - d log s` (d latent dimensions), `-log p_theta(z_0)` bounded by the
    diffusion bound above with a continuous Gaussian decoder at the last step (latents are not 8-bit), and
    E_q[log q_phi(z | x)] = -H[q_phi(z | x)] taken exactly. The pixel decoder p_psi(x | z) is a discretized Gaussian
    over the 256 levels centred on `vae.decode(z).sample`, with the scalar log-std stored in the vae config
    when there is one (see `ddpm_plugin.latent.set_decoder_log_scale`), else fitted by maximum likelihood on `images`
    (reported in `decoder_log_scale_fitted`).

    Args:
        unet (`torch.nn.Module` or callable): called as `unet(x_t, t)` with `t` a `(batch_size,)` long tensor;
            returns an object with `.sample` (or a tensor). It stays in its dtype and on its device; the images are
            moved there. A parameterless module (an analytic model) gets the images' device and dtype.
        scheduler ([`GaussianDDPMScheduler`]): the process; not modified (a deep copy is set to the chain).
        images (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`): 8-bit images scaled to
            [-1, 1] (k / 127.5 - 1, k = 0..255), float16/32/64.
        vae ([`diffusers.AutoencoderKL`], *optional*): evaluate the latent model instead of a pixel model.
        generator (`torch.Generator`, *optional*): the source of all noise (x_t, and z for latent models).
        batch_size (`int`, *optional*): images per unet call; the result does not depend on it.
        num_timesteps (`int`, *optional*): evaluate the chain of `scheduler.set_timesteps(num_timesteps)` instead of
            all T steps. This is the exact bound of the *respaced* model (ND section 4), an estimate for the T-step
            model; `strided` is then True.

    Returns:
        [`BitsPerDimOutput`]: `.bpd` of shape `(batch_size,)` and its parts.

    Cost: exactly one unet forward per chain timestep per image.
    """
    x_0 = check_images(images)  # (B, C, H, W) float64 on the 256-level grid
    num_images = x_0.shape[0]
    if batch_size is None:
        batch_size = num_images
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer or None (all images at once).")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}.")
    chain_scheduler = _chain_scheduler(scheduler, num_timesteps)
    chain = [int(t) for t in chain_scheduler.timesteps.tolist()]
    strided = len(chain) < scheduler.config.num_train_timesteps
    num_dims = x_0[0].numel()
    to_bpd = 1.0 / (num_dims * math.log(2.0))
    note = (
        f"bound of the respaced {len(chain)}-step model (an estimate for the {scheduler.config.num_train_timesteps}"
        "-step model)"
        if strided
        else f"exact bound over all {len(chain)} timesteps"
    )
    device, dtype = placement(unet, x_0)

    if vae is None:
        prior, kl_terms, decoder_term = _diffusion_bound_nats(
            unet, chain_scheduler, x_0.to(device), generator, batch_size, dtype, "discretized"
        )
        prior, kl_terms, decoder_term = prior.cpu(), kl_terms.cpu(), decoder_term.cpu()
        total = prior + kl_terms.sum(1) + decoder_term
        return BitsPerDimOutput(
            bpd=total * to_bpd,
            prior_bpd=prior * to_bpd,
            timestep_bpd=kl_terms * to_bpd,
            decoder_bpd=decoder_term * to_bpd,
            timesteps=chain[:-1],
            decoder_timestep=chain[-1],
            strided=strided,
            total_nats=total,
            num_dims=num_dims,
            note=note,
        )

    scale = get_latent_scale(vae)
    # 1. q_phi(z | x) and one sample z = mu + sigma eps, eps drawn for the whole batch (independent of batch_size)
    mean, logvar = encode_moments(vae, x_0, batch_size)  # (B, c, h, w) float64
    z = mean + torch.exp(0.5 * logvar) * randn_float64(mean.shape, generator, mean.device)
    num_latent_dims = z[0].numel()
    latent_dims = tuple(range(1, z.ndim))
    # E_q[log q_phi(z | x)] = -H[q_phi(z | x)] = -sum 0.5 (log(2 pi) + 1 + log sigma^2), exact
    log_q = -0.5 * (math.log(2 * math.pi) + 1.0 + logvar).sum(latent_dims)
    # 2. -log p_psi(x | z): discretized Gaussian around the decoder output, scalar log-std
    decoded = decode_means(vae, z, batch_size)  # (B, C, H, W) float64
    stored = get_decoder_log_scale(vae)
    fitted = stored is None
    log_scale = fit_discretized_log_scale(x_0, decoded) if fitted else float(stored)
    dims = tuple(range(1, x_0.ndim))
    reconstruction = -discretized_gaussian_log_likelihood(x_0, decoded.to(x_0.device), log_scale).sum(dims)
    # 3. -log p_theta(z_0), z_0 = s z, by the diffusion bound with a continuous decoder
    prior, kl_terms, decoder_term = _diffusion_bound_nats(
        unet, chain_scheduler, (scale * z).to(device), generator, batch_size, dtype, "continuous"
    )
    prior, kl_terms, decoder_term = prior.cpu(), kl_terms.cpu(), decoder_term.cpu()
    latent_prior = prior + kl_terms.sum(1) + decoder_term
    # 4. change of variables z -> z_0 = s z: -log p_theta(z) = -log p_theta(z_0) - d log s
    log_scale_term = torch.full_like(latent_prior, -num_latent_dims * math.log(scale))
    reconstruction, log_q = reconstruction.cpu(), log_q.cpu()
    total = reconstruction + log_q + latent_prior + log_scale_term
    note += f"; latent model, s = {scale:.6g}, decoder log-std {log_scale:.6g} " + (
        "fitted on these images" if fitted else "stored in the vae config"
    )
    return BitsPerDimOutput(
        bpd=total * to_bpd,
        prior_bpd=prior * to_bpd,
        timestep_bpd=kl_terms * to_bpd,
        decoder_bpd=decoder_term * to_bpd,
        timesteps=chain[:-1],
        decoder_timestep=chain[-1],
        strided=strided,
        total_nats=total,
        num_dims=num_dims,
        note=note,
        reconstruction_bpd=reconstruction * to_bpd,
        posterior_log_prob_bpd=log_q * to_bpd,
        latent_prior_bpd=latent_prior * to_bpd,
        log_scale_bpd=log_scale_term * to_bpd,
        latent_scale=scale,
        num_latent_dims=num_latent_dims,
        decoder_log_scale=log_scale,
        decoder_log_scale_fitted=fitted,
    )
