# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""The Gaussian DDPM scheduler of Ho, Jain & Abbeel (2020), with the ELBO terms (docs/maths.md sections 1-3).

Equation numbers: "Ho (n)" is Ho et al. 2020 (arXiv 2006.11239), "ND (n)" is Nichol & Dhariwal 2021 (arXiv 2102.09672).
Index convention: diffusers counts timesteps 0..T-1, so diffusers' `t` is the paper's `t + 1`, and t = 0 is the
decoder step L_0.

Every schedule-derived quantity is computed once, in float64, by `_posterior_table`; `step`, `add_noise` and the
likelihood code (`ddpm_plugin.likelihood`) all read it, so sampling, training and evaluation cannot disagree.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")

# columns of the per-timestep coefficient table (see `_posterior_table`)
_COLUMNS = (
    "sqrt_alpha_prod",  # sqrt(alpha_bar_t)
    "sqrt_one_minus_alpha_prod",  # sqrt(1 - alpha_bar_t)
    "sqrt_recip_alpha_prod",  # 1 / sqrt(alpha_bar_t)
    "pred_original_sample_coeff",  # coefficient of x_0 in mu_tilde, Ho (7)
    "current_sample_coeff",  # coefficient of x_t in mu_tilde, Ho (7)
    "posterior_variance",  # beta_tilde_t, Ho (7) (0 at the decoder step)
    "posterior_log_variance",  # log max(beta_tilde_t, 1e-20), what sampling uses (diffusers' clamp)
    "posterior_log_variance_clipped",  # log beta_tilde_t, the decoder step taking the next step's value
    "beta",  # beta_t of the (possibly respaced) step: 1 - alpha_bar_t / alpha_bar_prev
    "log_beta",
)
_COL = {name: i for i, name in enumerate(_COLUMNS)}


@dataclass
class GaussianDDPMSchedulerOutput(BaseOutput):
    """
    Output of [`GaussianDDPMScheduler.step`].

    Args:
        prev_sample (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
            x_{t-1}, the next input of the denoising loop.
        pred_original_sample (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
            x0_hat, the predicted clean sample of Ho (15); free with every step, it is what a preview shows.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


@dataclass
class ReverseDistribution:
    """p_theta(x_{t-1} | x_t) = N(mean, exp(log_variance)), Ho (1), and the x0_hat it was built from."""

    mean: torch.Tensor
    log_variance: torch.Tensor
    pred_original_sample: torch.Tensor
    pred_epsilon: torch.Tensor


def _cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """ND (17): alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t / T + s) / (1 + s)) * pi / 2), s = 0.008, beta <= 0.999."""

    def alpha_bar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    t = np.arange(num_train_timesteps)
    return np.array(
        [min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), max_beta) for i in t]
    )


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. 2023 (arXiv 2305.08891), Algorithm 1: shift and scale sqrt(alpha_bar) so that alpha_bar_T = 0."""
    sqrt_alpha_bar = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sqrt_alpha_bar[0], sqrt_alpha_bar[-1]
    sqrt_alpha_bar = (sqrt_alpha_bar - last) * first / (first - last)
    alpha_bar = sqrt_alpha_bar**2
    alphas = np.concatenate([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1.0 - alphas


class GaussianDDPMScheduler(SchedulerMixin, ConfigMixin):
    """
    The DDPM ancestral sampler (Ho et al. 2020, Algorithm 2) with the config keys and numerics of
    `diffusers.DDPMScheduler`, plus the quantities the exact ELBO needs (`q_posterior_mean_variance`,
    `p_mean_variance`).

    It swaps with `DDPMScheduler`, `DDIMScheduler` and `DPMSolverMultistepScheduler` through `from_config` in both
    directions.

    Args:
        num_train_timesteps (`int`, defaults to 1000): T, the number of diffusion steps.
        beta_start (`float`, defaults to 1e-4) / beta_end (`float`, defaults to 0.02): ends of the beta schedule.
        beta_schedule (`str`): `"linear"` (Ho), `"scaled_linear"`, `"squaredcos_cap_v2"` (ND (17)) or `"sigmoid"`.
        trained_betas (`list[float]`, *optional*): explicit betas in (0, 1], non-decreasing; overrides the schedule.
        variance_type (`str`): sigma_t^2 of the reverse process: `"fixed_small"` (beta_tilde_t), `"fixed_large"`
            (beta_t), their `_log` variants (same distribution), `"learned"` (the model's second half of channels
            is sigma_t^2 itself, diffusers' convention) or `"learned_range"` (ND (15), the second half is v in
            [-1, 1], mapped to frac = (v + 1) / 2).
        clip_sample (`bool`, defaults to True) / clip_sample_range (`float`, defaults to 1.0): clip x0_hat.
        prediction_type (`str`): what the model predicts: `"epsilon"`, `"sample"` (x_0) or `"v_prediction"`.
        thresholding (`bool`), dynamic_thresholding_ratio (`float`), sample_max_value (`float`): Imagen's dynamic
            thresholding of x0_hat (Saharia et al. 2022); not for latent models.
        timestep_spacing (`str`): `"linspace"`, `"leading"` or `"trailing"` (Lin et al. 2023, Table 2).
        steps_offset (`int`): added to the timesteps of `"leading"` spacing.
        rescale_betas_zero_snr (`bool`): rescale betas to zero terminal SNR (Lin et al. 2023, Algorithm 1).
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"] = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        variance_type: Literal[
            "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"
        ] = "fixed_small",
        clip_sample: bool = True,
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        _check_choice("variance_type", variance_type, VARIANCE_TYPES)
        _check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        _check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        if not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be a positive integer, got {num_train_timesteps!r}.")
        if clip_sample_range <= 0:
            raise ValueError(f"clip_sample_range must be > 0, got {clip_sample_range!r}.")
        if not 0.0 < dynamic_thresholding_ratio <= 1.0:
            raise ValueError(f"dynamic_thresholding_ratio must lie in (0, 1], got {dynamic_thresholding_ratio!r}.")

        betas = self._make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        if rescale_betas_zero_snr:
            betas = _rescale_zero_terminal_snr(betas)

        # float64 masters, Ho (4): alpha_t = 1 - beta_t, alpha_bar_t = prod_{s<=t} alpha_s
        self.betas_f64 = torch.from_numpy(betas)
        self.alphas_cumprod_f64 = torch.cumprod(1.0 - self.betas_f64, dim=0)
        # float32 views under diffusers' names, for code that reads them (e.g. min-SNR weighting)
        self.betas = self.betas_f64.float()
        self.alphas = (1.0 - self.betas_f64).float()
        self.alphas_cumprod = self.alphas_cumprod_f64.float()
        self.one = torch.tensor(1.0)

        self.init_noise_sigma = 1.0
        self.custom_timesteps = False
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy())
        self.variance_type = variance_type
        self._set_chain(self.timesteps.numpy())

    # ------------------------------------------------------------------------------------------------ schedule
    @staticmethod
    def _make_betas(
        num_train_timesteps: int,
        beta_start: float,
        beta_end: float,
        beta_schedule: str,
        trained_betas: np.ndarray | list[float] | None,
    ) -> np.ndarray:
        if trained_betas is not None:
            betas = np.asarray(trained_betas, dtype=np.float64).reshape(-1)
            if betas.shape[0] != num_train_timesteps:
                raise ValueError(
                    f"trained_betas has {betas.shape[0]} values but num_train_timesteps is {num_train_timesteps}; "
                    "give exactly one beta per training timestep."
                )
            name = "trained_betas"
        elif beta_schedule == "linear":  # Ho: beta from 1e-4 to 0.02
            betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
            name = f"linear betas (beta_start={beta_start}, beta_end={beta_end})"
        elif beta_schedule == "scaled_linear":  # latent diffusion
            betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
            name = f"scaled_linear betas (beta_start={beta_start}, beta_end={beta_end})"
        elif beta_schedule == "squaredcos_cap_v2":
            betas = _cosine_betas(num_train_timesteps)
            name = "squaredcos_cap_v2 betas"
        elif beta_schedule == "sigmoid":  # GeoDiff
            u = np.linspace(-6, 6, num_train_timesteps, dtype=np.float64)
            betas = 1.0 / (1.0 + np.exp(-u)) * (beta_end - beta_start) + beta_start
            name = f"sigmoid betas (beta_start={beta_start}, beta_end={beta_end})"
        else:
            raise ValueError(
                f"beta_schedule={beta_schedule!r} is not supported; choose one of {BETA_SCHEDULES} "
                "or pass trained_betas."
            )
        if not np.all(np.isfinite(betas)) or betas.min() <= 0.0 or betas.max() > 1.0:
            bad = betas[~(np.isfinite(betas) & (betas > 0) & (betas <= 1))][0]
            raise ValueError(f"{name} contain {bad!r}; every beta must lie in (0, 1].")
        if np.any(np.diff(betas) < 0):
            i = int(np.argmax(np.diff(betas) < 0))
            raise ValueError(
                f"{name} decrease at t={i + 1} ({betas[i]!r} -> {betas[i + 1]!r}); betas must be non-decreasing."
            )
        return betas

    def _posterior_table(self, timesteps: np.ndarray, prev_timesteps: np.ndarray) -> torch.Tensor:
        """
        The one place where the posterior of Ho (6)-(7) is computed, in float64, for the steps t -> prev_t of a chain.

        A respaced chain (DDPM with fewer steps) is the same process with alpha_bar restricted to the chosen
        timesteps, so beta of the step is 1 - alpha_bar_t / alpha_bar_prev (ND section 4). prev_t = -1 means x_0,
        where alpha_bar_prev = 1.

        Returns a `(len(timesteps), len(_COLUMNS))` float64 tensor.
        """
        abar = self.alphas_cumprod_f64.numpy()
        t = np.asarray(timesteps, dtype=np.int64)
        prev = np.asarray(prev_timesteps, dtype=np.int64)
        alpha_prod_t = abar[t]
        alpha_prod_t_prev = np.where(prev >= 0, abar[np.clip(prev, 0, None)], 1.0)
        beta_prod_t = 1.0 - alpha_prod_t
        beta_prod_t_prev = 1.0 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = 1.0 - current_alpha_t
        with np.errstate(divide="ignore", invalid="ignore"):
            # Ho (7): mu_tilde = coef_x0 * x_0 + coef_xt * x_t, beta_tilde = (1 - abar_prev) / (1 - abar_t) * beta_t
            coef_x0 = np.sqrt(alpha_prod_t_prev) * current_beta_t / beta_prod_t
            coef_xt = np.sqrt(current_alpha_t) * beta_prod_t_prev / beta_prod_t
            posterior_variance = beta_prod_t_prev / beta_prod_t * current_beta_t
            # beta_tilde is 0 at the decoder step; its log takes the value of the chain's next step
            # (improved-diffusion's posterior_log_variance_clipped)
            log_var = np.log(np.maximum(posterior_variance, 1e-20)).copy()
            decoder = prev < 0
            if decoder.any() and len(t) > 1:
                order = np.argsort(t)
                sorted_t = t[order]
                for i in np.nonzero(decoder)[0]:
                    above = order[np.searchsorted(sorted_t, t[i], side="right") :]
                    if len(above):
                        log_var[i] = log_var[above[0]]
            log_beta = np.log(current_beta_t)
        columns = {
            "sqrt_alpha_prod": np.sqrt(alpha_prod_t),
            "sqrt_one_minus_alpha_prod": np.sqrt(beta_prod_t),
            "sqrt_recip_alpha_prod": np.divide(
                1.0, np.sqrt(alpha_prod_t), out=np.full_like(alpha_prod_t, np.inf), where=alpha_prod_t > 0
            ),
            "pred_original_sample_coeff": coef_x0,
            "current_sample_coeff": coef_xt,
            "posterior_variance": posterior_variance,
            "posterior_log_variance": np.log(np.maximum(posterior_variance, 1e-20)),
            "posterior_log_variance_clipped": log_var,
            "beta": current_beta_t,
            "log_beta": log_beta,
        }
        return torch.from_numpy(np.stack([columns[c] for c in _COLUMNS], axis=1))

    def _set_chain(self, timesteps: np.ndarray) -> None:
        """Tabulates, indexed by training timestep, the previous timestep and the step coefficients of a chain."""
        timesteps = np.asarray(timesteps, dtype=np.int64)
        prev = np.append(timesteps[1:], -1)
        num_train = self.config.num_train_timesteps
        self._prev_table = np.full(num_train, -2, dtype=np.int64)  # -2: not in the current chain
        self._prev_table[timesteps] = prev
        table = torch.full((num_train, len(_COLUMNS)), float("nan"), dtype=torch.float64)
        table[torch.from_numpy(timesteps)] = self._posterior_table(timesteps, prev)
        self._table_f64 = table
        self._table_cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._scalar_rows: list[tuple[float, ...] | None] = [None] * num_train
        for t in timesteps.tolist():
            self._scalar_rows[t] = tuple(float(v) for v in table[t])

    def _table(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The float64 table cast once per (device, dtype)."""
        key = (torch.device(device), dtype)
        if key not in self._table_cache:
            self._table_cache[key] = self._table_f64.to(device=device, dtype=dtype)
        return self._table_cache[key]

    def _column(self, name: str, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Column `name` at per-sample `timesteps`, shaped `(batch_size, 1, ..., 1)` to broadcast against `like`."""
        timesteps = torch.as_tensor(timesteps, device=like.device).long().reshape(-1)
        values = self._table(like.device, like.dtype)[timesteps, _COL[name]]
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    def _check_in_chain(self, timestep: int) -> None:
        if not 0 <= timestep < self.config.num_train_timesteps or self._prev_table[timestep] == -2:
            shown = self.timesteps.tolist()
            chain = shown if len(shown) <= 8 else shown[:4] + ["..."] + shown[-2:]
            raise ValueError(f"timestep {timestep} is not in the scheduler's current chain of timesteps {chain}.")

    # ------------------------------------------------------------------------------------------------ inference
    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """DDPM needs no input scaling; here for interchangeability with other schedulers."""
        return sample

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """
        Sets the chain of timesteps to sample with: `num_inference_steps` spaced by `timestep_spacing`, or a custom
        strictly descending list `timesteps`. With fewer steps than T this is the respaced DDPM of ND section 4.
        """
        num_train = self.config.num_train_timesteps
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Pass either num_inference_steps or timesteps to set_timesteps, not both.")
        if timesteps is not None:
            timesteps = [int(t) for t in timesteps]
            if len(timesteps) == 0:
                raise ValueError("timesteps is empty; give at least one timestep in [0, num_train_timesteps).")
            for i in range(1, len(timesteps)):
                if timesteps[i] >= timesteps[i - 1]:
                    raise ValueError(
                        f"custom timesteps must be strictly descending, but {timesteps[i]} follows {timesteps[i - 1]} "
                        f"at position {i}."
                    )
            if timesteps[0] >= num_train or timesteps[-1] < 0:
                raise ValueError(
                    f"custom timesteps must lie in [0, {num_train}), got {timesteps[0]} ... {timesteps[-1]}."
                )
            ts = np.array(timesteps, dtype=np.int64)
            self.custom_timesteps = True
            self.num_inference_steps = len(ts)
        else:
            if num_inference_steps is None:
                raise ValueError("set_timesteps needs num_inference_steps or timesteps.")
            if not isinstance(num_inference_steps, int | np.integer) or not 1 <= num_inference_steps <= num_train:
                raise ValueError(
                    f"num_inference_steps={num_inference_steps!r} is not allowed: it must be an integer in "
                    f"[1, {num_train}] (num_train_timesteps)."
                )
            num_inference_steps = int(num_inference_steps)
            self.num_inference_steps = num_inference_steps
            self.custom_timesteps = False
            spacing = self.config.timestep_spacing
            if spacing == "linspace":
                ts = np.linspace(0, num_train - 1, num_inference_steps).round()[::-1].copy().astype(np.int64)
            elif spacing == "leading":
                step_ratio = num_train // num_inference_steps
                ts = (np.arange(0, num_inference_steps) * step_ratio).round()[::-1].copy().astype(np.int64)
                ts += self.config.steps_offset
            else:  # trailing
                step_ratio = num_train / num_inference_steps
                ts = np.round(np.arange(num_train, 0, -step_ratio)).astype(np.int64) - 1
            if ts.max() >= num_train:
                raise ValueError(
                    f"steps_offset={self.config.steps_offset} pushes timestep {int(ts.max())} past "
                    f"num_train_timesteps={num_train}."
                )
        self.timesteps = torch.from_numpy(ts).to(device)
        self._set_chain(ts)

    def chain_copy(self, num_inference_steps: int | None = None) -> GaussianDDPMScheduler:
        """
        A deep copy of this scheduler set to the full chain T-1..0 (`num_inference_steps=None` or T), or to the
        respaced chain of `set_timesteps(num_inference_steps)`; this scheduler is not modified. The likelihood and
        the training losses evaluate the bound on such a copy.
        """
        num_train = self.config.num_train_timesteps
        chain = copy.deepcopy(self)
        if num_inference_steps is None or num_inference_steps == num_train:
            chain.set_timesteps(timesteps=list(range(num_train - 1, -1, -1)))
        else:
            chain.set_timesteps(num_inference_steps)
        return chain

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """The timestep that follows `timestep` in the current chain; -1 after the last one (x_0)."""
        t = int(timestep)
        self._check_in_chain(t)
        prev = int(self._prev_table[t])
        return torch.tensor(prev) if isinstance(timestep, torch.Tensor) else prev

    def _split_model_output(
        self, model_output: torch.Tensor, sample: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Splits off the variance channels that `learned` / `learned_range` need, checking the channel count."""
        channels = sample.shape[1]
        learned = self.variance_type in ("learned", "learned_range")
        expected = 2 * channels if learned else channels
        if model_output.ndim != sample.ndim or model_output.shape[1] != expected:
            raise ValueError(
                f"model_output has shape {tuple(model_output.shape)} but variance_type={self.variance_type!r} "
                f"with a sample of {channels} channels needs {expected} channels"
                + (" (prediction, then variance)." if learned else ".")
            )
        if learned:
            return model_output[:, :channels], model_output[:, channels:]
        return model_output, None

    def predict_original_sample(
        self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor
    ) -> torch.Tensor:
        """
        x0_hat of docs/maths.md [X0] / [PRED] (Ho (15) for epsilon prediction), clipped or thresholded as configured,
        from the float64 table of the current chain. `step` and `p_mean_variance` use it.

        Args:
            model_output (`torch.Tensor` of shape `(batch_size, num_channels or 2 * num_channels, height, width)`):
                the network output (the variance channels of `learned` / `learned_range` are not used).
            timestep (`int` or `torch.Tensor`): one timestep of the chain (an int or a 0-dim tensor), or per-sample
                timesteps of shape `(batch_size,)`.
            sample (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`): x_t.

        Returns:
            `torch.Tensor`: x0_hat, a new tensor shaped like `sample`.
        """
        model_output, _ = self._split_model_output(model_output, sample)
        if isinstance(timestep, torch.Tensor) and timestep.ndim > 0:
            return self._predict_original_sample(model_output, timestep, sample)
        t = int(timestep)
        self._check_in_chain(t)
        return self._predict_original_sample(model_output, t, sample)

    def _predict_original_sample(
        self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor
    ) -> torch.Tensor:
        """`predict_original_sample` for a prediction without variance channels and a timestep in the chain."""
        pred_type = self.config.prediction_type
        if isinstance(timestep, int):
            # one step: the table's Python floats, fused and in place on a fresh tensor (the speed of `step`)
            row = self._scalar_rows[timestep]
            if pred_type == "epsilon":  # subtract first, then multiply by 1 / sqrt(abar): fewer roundings
                x0 = torch.sub(sample, model_output, alpha=row[_COL["sqrt_one_minus_alpha_prod"]])
                x0.mul_(row[_COL["sqrt_recip_alpha_prod"]])
            elif pred_type == "sample":
                x0 = model_output.clone()
            else:
                x0 = torch.mul(sample, row[_COL["sqrt_alpha_prod"]])
                x0.add_(model_output, alpha=-row[_COL["sqrt_one_minus_alpha_prod"]])
        else:
            # per-sample timesteps: columns shaped (batch_size, 1, ..., 1)
            sqrt_alpha_prod = self._column("sqrt_alpha_prod", timestep, sample)
            sqrt_one_minus_alpha_prod = self._column("sqrt_one_minus_alpha_prod", timestep, sample)
            if pred_type == "epsilon":
                x0 = (sample - sqrt_one_minus_alpha_prod * model_output) / sqrt_alpha_prod
            elif pred_type == "sample":
                x0 = model_output.clone()
            else:  # v = sqrt(abar) eps - sqrt(1 - abar) x_0  =>  x_0 = sqrt(abar) x_t - sqrt(1 - abar) v
                x0 = sqrt_alpha_prod * sample - sqrt_one_minus_alpha_prod * model_output
        if self.config.thresholding:
            return self._threshold_sample(x0)
        if self.config.clip_sample:
            x0.clamp_(-self.config.clip_sample_range, self.config.clip_sample_range)
        return x0

    def _threshold_sample(self, sample: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding (Saharia et al. 2022): clamp x0_hat to [-s, s] and divide by s, s a per-sample
        quantile of |x0_hat| kept in [1, sample_max_value]."""
        dtype = sample.dtype
        flat = sample.float().reshape(sample.shape[0], -1)  # (B, C*H*W); quantile needs float32
        s = torch.quantile(flat.abs(), self.config.dynamic_thresholding_ratio, dim=1)
        s = s.clamp(min=1, max=self.config.sample_max_value).unsqueeze(1)
        return (torch.clamp(flat, -s, s) / s).reshape(sample.shape).to(dtype)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> GaussianDDPMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """
        One step of Algorithm 2 (Ho et al.): x_t -> x_{t-1} ~ p_theta(x_{t-1} | x_t).

        Args:
            model_output (`torch.Tensor` of shape `(batch_size, num_channels or 2 * num_channels, height, width)`):
                the network output (prediction, then the variance channels for `learned` / `learned_range`).
            timestep (`int`): the current timestep t of the chain.
            sample (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`): x_t.
            generator (`torch.Generator`, *optional*): the random source of z.
            return_dict (`bool`): return a `GaussianDDPMSchedulerOutput` (default) or a tuple.

        Returns:
            `prev_sample` x_{t-1} and `pred_original_sample` x0_hat (Ho (15)), same shape as `sample`.
        """
        t = int(timestep)
        self._check_in_chain(t)
        model_output, predicted_variance = self._split_model_output(model_output, sample)
        row = self._scalar_rows[t]

        # 1. x0_hat from the model output, Ho (15), clipped or thresholded
        pred_original_sample = self._predict_original_sample(model_output, t, sample)
        # 2. mean of q(x_{t-1} | x_t, x0_hat), Ho (7); equals mu_theta of Ho (11) for epsilon prediction
        pred_prev_sample = torch.mul(sample, row[_COL["current_sample_coeff"]])
        pred_prev_sample.add_(pred_original_sample, alpha=row[_COL["pred_original_sample_coeff"]])
        # 3. add sigma_t z, z ~ N(0, I), for t > 0 (Algorithm 2, line 3); z = 0 at the decoder step
        if t > 0:
            variance_noise = randn_tensor(
                model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
            )
            # unclipped log variance: a chain ending at t > 0 (trailing spacing) samples its last step from a
            # posterior of variance 0
            variance, log_variance = self._reverse_variance(
                lambda name: row[_COL[name]], predicted_variance, clipped=False
            )
            if isinstance(variance, float):
                pred_prev_sample.add_(variance_noise, alpha=math.sqrt(max(variance, 1e-20)))
            else:
                std = variance**0.5 if variance is not None else torch.exp(0.5 * log_variance)
                pred_prev_sample.addcmul_(std, variance_noise)

        if not return_dict:
            return (pred_prev_sample, pred_original_sample)
        return GaussianDDPMSchedulerOutput(prev_sample=pred_prev_sample, pred_original_sample=pred_original_sample)

    def _reverse_variance(
        self,
        column: Callable[[str], float | torch.Tensor],
        predicted_variance: torch.Tensor | None,
        *,
        clipped: bool,
    ) -> tuple[float | torch.Tensor | None, float | torch.Tensor | None]:
        """
        sigma_t^2 of p_theta(x_{t-1} | x_t) by `variance_type`, docs/maths.md [VAR], as `(variance, log_variance)`:
        each is given where the table or the network has it directly, else `None` (learned: no log variance;
        learned_range: no variance). `column(name)` reads a column of the table (a float of one step, or per-sample
        columns); `clipped` takes beta_tilde's log at the decoder step from the next step (the likelihood's
        convention) instead of the clamped log(1e-20) of sampling.
        """
        vt = self.variance_type
        log_posterior_variance = "posterior_log_variance_clipped" if clipped else "posterior_log_variance"
        if vt in ("fixed_small", "fixed_small_log"):
            return column("posterior_variance"), column(log_posterior_variance)
        if vt in ("fixed_large", "fixed_large_log"):
            return column("beta"), column("log_beta")
        if vt == "learned":
            return predicted_variance, None
        # learned_range, ND (15): log sigma^2 = frac log beta_t + (1 - frac) log beta_tilde_t
        frac = (predicted_variance + 1) / 2
        return None, frac * column("log_beta") + (1 - frac) * column(log_posterior_variance)

    # ------------------------------------------------------------------------------------------------ ELBO terms
    def q_posterior_mean_variance(
        self, original_sample: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor | int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        q(x_prev | x_t, x_0) of Ho (6)-(7) for the current chain: (mean, variance, clipped log variance), each
        `(batch_size, num_channels, height, width)`-broadcastable. `timesteps` is a scalar or a `(batch_size,)` tensor.
        """
        c = lambda name: self._column(name, timesteps, sample)  # noqa: E731
        mean = c("pred_original_sample_coeff") * original_sample + c("current_sample_coeff") * sample
        return mean, c("posterior_variance"), c("posterior_log_variance_clipped")

    def p_mean_variance(
        self, model_output: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor | int
    ) -> ReverseDistribution:
        """
        p_theta(x_prev | x_t) = N(mu_theta, sigma_t^2) of Ho (1), (11) for the current chain, at per-sample
        `timesteps`. The mean is mu_tilde(x0_hat, x_t) of Ho (7) (with the scheduler's clipping), the same as `step`.

        Variance at the decoder step (t = 0): fixed_small uses the clipped log variance (the next step's beta_tilde,
        improved-diffusion's convention, since beta_tilde_1 = 0); fixed_large uses beta_1; learned_range interpolates
        between these two, so its ends reproduce the fixed variances.
        """
        model_output, predicted_variance = self._split_model_output(model_output, sample)
        timesteps = torch.as_tensor(timesteps, device=sample.device).reshape(-1)
        c = lambda name: self._column(name, timesteps, sample)  # noqa: E731
        x0 = self._predict_original_sample(model_output, timesteps, sample)
        mean = c("pred_original_sample_coeff") * x0 + c("current_sample_coeff") * sample
        variance, log_variance = self._reverse_variance(c, predicted_variance, clipped=True)
        if log_variance is None:
            log_variance = torch.log(variance)
        log_variance = log_variance.expand_as(sample)
        # eps implied by x0_hat, for losses and diagnostics: x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps
        pred_epsilon = (sample - c("sqrt_alpha_prod") * x0) / c("sqrt_one_minus_alpha_prod")
        return ReverseDistribution(
            mean=mean, log_variance=log_variance, pred_original_sample=x0, pred_epsilon=pred_epsilon
        )

    # ------------------------------------------------------------------------------------------------ training
    def _train_column(self, name: str, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Forward-process column at training timesteps, independent of the sampling chain (alpha_bar only)."""
        key = ("train", torch.device(like.device), like.dtype)
        if key not in self._table_cache:
            abar = self.alphas_cumprod_f64
            self._table_cache[key] = torch.stack([abar.sqrt(), (1 - abar).sqrt()], dim=1).to(like.device, like.dtype)
        col = {"sqrt_alpha_prod": 0, "sqrt_one_minus_alpha_prod": 1}[name]
        timesteps = torch.as_tensor(timesteps, device=like.device).long().reshape(-1)
        return self._table_cache[key][timesteps, col].reshape(-1, *([1] * (like.ndim - 1)))

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor
    ) -> torch.Tensor:
        """Ho (4): x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, at per-sample `timesteps` `(batch_size,)`."""
        return (
            self._train_column("sqrt_alpha_prod", timesteps, original_samples) * original_samples
            + self._train_column("sqrt_one_minus_alpha_prod", timesteps, original_samples) * noise
        )

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor) -> torch.Tensor:
        """The v-prediction target v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (Salimans & Ho 2022)."""
        return (
            self._train_column("sqrt_alpha_prod", timesteps, sample) * noise
            - self._train_column("sqrt_one_minus_alpha_prod", timesteps, sample) * sample
        )

    def __len__(self) -> int:
        return self.config.num_train_timesteps


def _check_choice(name: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {allowed}.")
