"""The training configuration: one dataclass, one comment per field, turned into CLI flags generically.

`TrainingConfig` holds every setting of a run. `build_parser` makes one flag per field with transformers'
`HfArgumentParser` (the help text is the field's `help` metadata); `parse_args` merges, in increasing priority, the
dataclass defaults, a `--config` YAML/JSON file and the flags given on the command line, then validates the result.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the CLI needs transformers (the `train` extra); the config itself does not
    from transformers import HfArgumentParser

__all__ = ["TrainingConfig", "build_parser", "load_config_file", "parse_args", "config_from_dict"]

STAGES = ("unet", "vae")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range")
LOSS_TYPES = ("simple", "hybrid")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
MIXED_PRECISION = ("no", "fp16", "bf16")
REPORT_TO = ("tensorboard", "none")


def _f(default: Any, help: str, **kwargs) -> Any:  # noqa: A002
    """A dataclass field whose `help` metadata becomes the CLI help text."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class TrainingConfig:
    """Every setting of a training run (VAE stage or UNet stage, pixel or latent). Field names are the CLI flags."""

    # ------------------------------------------------------------------------------------------------ run
    stage: Literal["unet", "vae"] = _f(
        "unet", "What to train: 'unet' (the DDPM noise predictor) or 'vae' (AutoencoderKL)."
    )
    latent: bool = _f(False, "UNet stage: diffuse in the latent space of the frozen VAE given by --vae_path.")
    vae_path: str | None = _f(
        None, "Latent UNet stage: the AutoencoderKL folder written by --stage vae (or a latent pipeline folder)."
    )
    output_dir: str = _f("runs/ddpm", "Run folder: checkpoints/, logs/, samples/ and the final pipeline/ (vae/).")
    init_from: str | None = _f(
        None,
        "Fine-tune: start from a bundled model (bundled:pixel, bundled:latent), a pipeline folder, a model folder or a "
        "Hub id (a diffusers UNet2DModel is converted; the VAE stage takes an AutoencoderKL). Scheduler config and "
        "architecture come from there.",
    )
    resume: str | None = _f(None, "Resume: 'latest' (newest complete checkpoint in output_dir) or a checkpoint path.")
    seed: int = _f(0, "Random seed (model init, data order; noise/timesteps use seed + 1000 * process index).")
    deterministic: bool = _f(
        False, "Call torch.use_deterministic_algorithms(True) (bit-exact runs and resumes on CPU)."
    )
    # ------------------------------------------------------------------------------------------------ data
    dataset: str = _f(
        "mnist",
        "Training images: 'mnist' (built-in 5,000 digits, 500 held out), a folder of images, a Hugging Face datasets "
        "id or a dataset saved with save_to_disk.",
    )
    dataset_config_name: str | None = _f(None, "Hugging Face datasets: the config (subset) name.")
    dataset_split: str = _f("train", "Hugging Face datasets: the split to train on.")
    image_column: str = _f("image", "Hugging Face datasets: the column holding the images.")
    resolution: int | None = _f(
        None, "Image size (resize + center crop). Default: 28 for mnist (32 with --mnist_pad), else the model's."
    )
    channels: int = _f(1, "Image channels: 1 (grayscale) or 3 (RGB); images are converted to this.")
    mnist_pad: bool = _f(False, "MNIST: pad the 28x28 digits to 32x32 with background.")
    center_crop: bool = _f(True, "Center-crop to a square after resizing the short side (else crop at the top-left).")
    random_flip: bool = _f(False, "Augmentation: random horizontal flip (off for digits).")
    max_train_samples: int | None = _f(None, "Use only the first N training images (debugging, tiny runs).")
    dataloader_num_workers: int = _f(0, "DataLoader worker processes (0: load in the main process).")
    # ------------------------------------------------------------------------------------------------ UNet
    model_channels: int = _f(32, "UNet: base channel count.")
    channel_mult: list[int] = _f([1, 2, 2], "UNet: channel multiplier per resolution level (one downsample between).")
    layers_per_block: int = _f(2, "UNet: ResNet blocks per level.")
    attention_resolutions: list[int] = _f([7], "UNet: feature-map sizes that get self-attention.")
    dropout: float = _f(0.1, "UNet: dropout in the ResNet blocks.")
    norm_num_groups: int = _f(32, "UNet: GroupNorm groups (must divide every level's channels).")
    # ------------------------------------------------------------------------------------------------ VAE
    vae_block_out_channels: list[int] = _f(
        [32, 64, 64], "VAE: channels per encoder level (len - 1 downsamples: 28x28 -> 7x7 for three levels)."
    )
    vae_layers_per_block: int = _f(1, "VAE: ResNet blocks per level.")
    vae_latent_channels: int = _f(4, "VAE: latent channels.")
    vae_norm_num_groups: int = _f(32, "VAE: GroupNorm groups.")
    vae_kl_weight: float = _f(1e-4, "VAE: beta of the ELBO, loss = (sum of squared errors + beta * KL) / D.")
    latent_scale_samples: int = _f(2000, "Latent UNet: training images used to estimate the latent scale 1/std.")
    # ------------------------------------------------------------------------------------------------ diffusion
    num_train_timesteps: int = _f(1000, "T, the number of diffusion steps.")
    beta_schedule: str = _f("linear", f"Beta schedule: one of {BETA_SCHEDULES} (squaredcos_cap_v2 is ND's cosine).")
    beta_start: float = _f(1e-4, "First beta of the linear schedules.")
    beta_end: float = _f(0.02, "Last beta of the linear schedules.")
    prediction_type: str = _f("epsilon", f"What the UNet predicts: one of {PREDICTION_TYPES}.")
    variance_type: str = _f(
        "fixed_small", f"Reverse variance: one of {VARIANCE_TYPES}; learned_range needs --loss_type hybrid."
    )
    loss_type: str = _f("simple", "Objective: 'simple' (L_simple, Ho (14)) or 'hybrid' (L_simple + lambda L_vlb, ND).")
    lambda_vlb: float = _f(0.001, "Hybrid objective: the weight lambda of L_vlb (ND use 0.001).")
    snr_gamma: float | None = _f(None, "Min-SNR-gamma loss weighting (Hang et al. 2023), e.g. 5.0; off when unset.")
    clip_sample: bool = _f(True, "Sampling: clip the predicted x_0 to [-1, 1] (pixel models; off for latents).")
    default_num_inference_steps: int = _f(1000, "Sampling steps the exported pipeline uses by default.")
    # ------------------------------------------------------------------------------------------------ optimisation
    train_batch_size: int = _f(64, "Batch size per process (per micro-batch).")
    max_train_steps: int = _f(10000, "Optimizer steps to train for (the total, also when resuming).")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.")
    learning_rate: float = _f(2e-4, "Peak learning rate (AdamW).")
    lr_scheduler: str = _f("constant_with_warmup", f"Learning-rate schedule: one of {LR_SCHEDULERS}.")
    lr_warmup_steps: int = _f(500, "Linear warmup steps.")
    adam_beta1: float = _f(0.9, "AdamW beta1.")
    adam_beta2: float = _f(0.999, "AdamW beta2.")
    adam_weight_decay: float = _f(0.0, "AdamW weight decay.")
    adam_epsilon: float = _f(1e-8, "AdamW epsilon.")
    max_grad_norm: float | None = _f(1.0, "Clip the gradient norm to this (unset: no clipping).")
    mixed_precision: str = _f("no", f"Mixed precision: one of {MIXED_PRECISION} (accelerate).")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass (less memory, slower).")
    use_ema: bool = _f(True, "Keep an EMA of the weights; the exported pipeline uses it.")
    ema_decay: float = _f(0.999, "EMA decay (the maximum, with --ema_warmup).")
    ema_warmup: bool = _f(False, "EMA warmup: decay grows as 1 - (1 + step)^-power towards --ema_decay.")
    ema_power: float = _f(0.75, "EMA warmup power.")
    # ------------------------------------------------------------------------------------------------ checkpoints, logs
    checkpointing_steps: int = _f(
        500, "Save a checkpoint every N optimizer steps (and at the end); 0: only at the end."
    )
    checkpoints_total_limit: int | None = _f(3, "Keep at most this many checkpoints (unset: all).")
    logging_steps: int = _f(10, "Log loss and learning rate every N steps.")
    report_to: str = _f("tensorboard", f"Logger: one of {REPORT_TO}.")
    sample_steps: int = _f(1000, "Write a sample grid every N steps (0: off).")
    num_sample_images: int = _f(16, "Images in the sample grid.")
    sample_inference_steps: int = _f(50, "Sampling steps for the periodic grids (a respaced chain).")
    eval_steps: int = _f(1000, "Estimate held-out bits/dim every N steps (0: off).")
    eval_num_images: int = _f(16, "Held-out images for the bits/dim estimate.")
    eval_num_timesteps: int = _f(50, "Timesteps of the strided bits/dim estimate during training.")
    final_eval_num_images: int = _f(64, "Held-out images for the final bits/dim in the model card (0: off).")
    final_eval_num_timesteps: int | None = _f(200, "Timesteps of the final bits/dim estimate (unset: all T).")
    progress_bar: bool = _f(True, "Show a tqdm progress bar (main process only).")
    card_grid_inference_steps: int = _f(250, "Sampling steps of the model card's sample grid (save_for_hub).")
    push_to_hub: str | None = _f(None, "Also upload the final pipeline to this Hub repo id.")
    hub_private: bool = _f(False, "Make the Hub repo private.")
    # ------------------------------------------------------------------------------------------------ debugging
    debug_record_batches: bool = _f(
        False, "Debug: each process appends the dataset indices of its batches to output_dir/debug/."
    )
    debug_nan_at_step: int | None = _f(None, "Debug: make the loss NaN at this optimizer step (tests the NaN stop).")

    def __post_init__(self) -> None:
        for name in ("channel_mult", "attention_resolutions", "vae_block_out_channels"):
            value = getattr(self, name)
            if isinstance(value, tuple):
                setattr(self, name, list(value))

    # --------------------------------------------------------------------------------------------------------
    def validate(self) -> TrainingConfig:
        """Checks every value; raises `ValueError` naming the bad field, its value and what is allowed."""

        def choice(name: str, allowed: tuple) -> None:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not supported; choose one of {allowed}.")

        def positive(name: str, allow_zero: bool = False, allow_none: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or value < 0
                or (value == 0 and not allow_zero)
            ):
                raise ValueError(
                    f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}."
                )

        choice("stage", STAGES)
        choice("prediction_type", PREDICTION_TYPES)
        choice("variance_type", VARIANCE_TYPES)
        choice("loss_type", LOSS_TYPES)
        choice("beta_schedule", BETA_SCHEDULES)
        choice("lr_scheduler", LR_SCHEDULERS)
        choice("mixed_precision", MIXED_PRECISION)
        choice("report_to", REPORT_TO)
        for name in (
            "model_channels", "layers_per_block", "norm_num_groups", "vae_layers_per_block", "vae_latent_channels",
            "vae_norm_num_groups", "num_train_timesteps", "default_num_inference_steps", "train_batch_size",
            "max_train_steps", "gradient_accumulation_steps", "logging_steps", "num_sample_images",
            "sample_inference_steps", "card_grid_inference_steps", "eval_num_images", "eval_num_timesteps", "latent_scale_samples",
        ):  # fmt: skip
            positive(name)
        for name in ("lr_warmup_steps", "checkpointing_steps", "sample_steps", "eval_steps", "final_eval_num_images",
                     "adam_weight_decay", "vae_kl_weight", "lambda_vlb", "learning_rate", "dataloader_num_workers", "dropout"):  # fmt: skip
            positive(name, allow_zero=True)
        for name in ("checkpoints_total_limit", "max_train_samples", "snr_gamma", "max_grad_norm",
                     "final_eval_num_timesteps", "resolution"):  # fmt: skip
            positive(name, allow_none=True)
        if self.channels not in (1, 3):
            raise ValueError(f"channels={self.channels!r} is not supported; choose 1 (grayscale) or 3 (RGB).")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {self.ema_decay!r}.")
        if self.dropout >= 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout!r}.")
        for name in ("channel_mult", "vae_block_out_channels"):
            value = getattr(self, name)
            if not value or any(not isinstance(v, int) or v <= 0 for v in value):
                raise ValueError(f"{name} must be a non-empty list of positive integers, got {value!r}.")
        if any(not isinstance(v, int) or v <= 0 for v in self.attention_resolutions):
            raise ValueError(f"attention_resolutions must be positive integers, got {self.attention_resolutions!r}.")
        if self.variance_type == "learned_range" and self.loss_type != "hybrid":
            raise ValueError(
                "variance_type='learned_range' learns the variance, which only the hybrid objective trains: "
                "set loss_type='hybrid' (or use a fixed variance_type)."
            )
        if self.loss_type == "hybrid" and self.variance_type != "learned_range":
            raise ValueError(
                f"loss_type='hybrid' trains a learned variance; it needs variance_type='learned_range', "
                f"got {self.variance_type!r}."
            )
        if self.stage == "unet" and self.latent and not self.vae_path and not self.init_from:
            raise ValueError(
                "latent=True needs --vae_path (a VAE trained with --stage vae) or --init_from a latent pipeline."
            )
        if self.stage == "vae" and self.latent:
            raise ValueError(
                "latent=True applies to the UNet stage only; the VAE stage trains the autoencoder itself."
            )
        if self.num_sample_images > 64:
            raise ValueError(f"num_sample_images must be at most 64, got {self.num_sample_images}.")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------- parsing
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainingConfig)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """`X | None` -> (X, True); anything else -> (tp, False)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _none_or(convert):
    def parse(text: str):
        if text.lower() in ("none", "null", ""):
            return None
        return convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def build_parser() -> HfArgumentParser:
    """transformers' `HfArgumentParser` for `TrainingConfig` (one flag per field, its `help` metadata, defaults shown),
    plus `--config FILE`, with three things kept from this CLI: every boolean also has `--no-<name>`, optional values
    accept `none`, and lists may be empty (`--attention_resolutions` alone: no attention).
    """
    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        TrainingConfig,
        prog="ddpm-train",
        description=(
            "Train the DDPM plugin's models with accelerate: --stage vae trains the AutoencoderKL, --stage unet the "
            "noise predictor (pixel space, or --latent with a frozen VAE). Settings come from the field defaults, "
            "then --config FILE (YAML or JSON), then these flags. Booleans: --flag / --no-flag; optional values "
            "accept 'none'; lists take several values (--channel_mult 1 2 2)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", type=str, help="YAML or JSON file of settings (flags given here override it).")
    hints = _field_types()
    options = {option for action in parser._actions for option in action.option_strings}
    for action in list(parser._actions):
        if action.dest not in hints or action.option_strings[0] != f"--{action.dest}":
            continue  # --help, --config, HfArgumentParser's --no_<name> of booleans that default to True
        tp, optional = _unwrap_optional(hints[action.dest])
        if tp is bool and f"--no-{action.dest}" not in options:
            parser.add_argument(f"--no-{action.dest}", action="store_false", dest=action.dest, help=argparse.SUPPRESS)
        elif optional:
            action.type = _none_or(action.type)
        if action.nargs == "+":
            action.nargs = "*"
    return parser


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a YAML (`.yaml`, `.yml`) or JSON (`.json`) mapping of field names to values."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist.")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".json"):
        data = json.loads(text)
    elif path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        raise ValueError(f"config file {path!r} must end in .yaml, .yml or .json.")
    if not isinstance(data, dict):
        raise ValueError(f"config file {path!r} must hold a mapping of settings, got {type(data).__name__}.")
    return data


def config_from_dict(values: dict[str, Any]) -> TrainingConfig:
    """Builds a `TrainingConfig` from a mapping, rejecting unknown keys (with the allowed ones named)."""
    names = {f.name for f in dataclasses.fields(TrainingConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown training setting(s) {unknown}; allowed: {sorted(names)}.")
    hints = _field_types()
    clean = {}
    for key, value in values.items():
        tp, optional = _unwrap_optional(hints[key])
        if value is None and not optional:
            raise ValueError(f"{key} may not be null.")
        if value is not None and tp is float and isinstance(value, (int, str)) and not isinstance(value, bool):
            try:
                value = float(value)  # YAML reads `1e-4` as a string
            except ValueError:
                raise ValueError(f"{key} must be a number, got {value!r}.") from None
        if value is not None and tp is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if value is not None and tp in (int, str, bool) and not isinstance(value, tp):
            raise ValueError(f"{key} must be of type {tp.__name__}, got {value!r}.")
        if value is not None and tp is int and isinstance(value, bool):
            raise ValueError(f"{key} must be an integer, got {value!r}.")
        if value is not None and typing.get_origin(tp) is list:
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{key} must be a list, got {value!r}.")
            value = list(value)
        clean[key] = value
    return TrainingConfig(**clean)


def parse_args(argv: list[str] | None = None) -> TrainingConfig:
    """Defaults < `--config` file < command-line flags; returns the validated `TrainingConfig`."""
    parser = build_parser()
    config_path = parser.parse_known_args(argv)[0].config
    if config_path is not None:
        values = load_config_file(config_path)
        checked = config_from_dict(values)  # unknown keys and wrong types, named
        parser.set_defaults(**{key: getattr(checked, key) for key in values})
    config, _ = parser.parse_args_into_dataclasses(argv, look_for_args_file=False)
    return config.validate()
