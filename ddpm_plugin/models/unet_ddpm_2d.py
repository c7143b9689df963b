"""The DDPM noise predictor eps_theta(x_t, t): the UNet of Ho, Jain & Abbeel (2020), Appendix B.

The network follows the PixelCNN++-style UNet of Ho et al.: wide-ResNet blocks (GroupNorm + SiLU) at every
resolution level, a sinusoidal timestep embedding passed through an MLP and added (projected) in every ResNet block,
single-head self-attention at chosen resolutions and in the middle block, downsampling by a strided convolution,
upsampling by nearest neighbour + convolution, and skip connections concatenated on the up path.

It is written so that it computes exactly what `diffusers.UNet2DModel` computes in the layout of the published DDPM
checkpoints (`google/ddpm-cifar10-32` and friends); `DDPMUNet2DModel.from_diffusers_unet` converts those weights.
"""

import math
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn

from .convert import unet2d_state_dict_to_ddpm

if TYPE_CHECKING:  # pragma: no cover
    from diffusers import UNet2DModel

__all__ = ["DDPMUNet2DModel", "UNet2DOutput", "convert_unet2d_to_ddpm", "get_timestep_embedding"]


def get_timestep_embedding(
    timesteps: torch.Tensor,
    embedding_dim: int,
    flip_sin_to_cos: bool = False,
    freq_shift: float = 1.0,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """
    Sinusoidal timestep embedding of Ho et al. (Section 3.4, borrowed from the Transformer), always in float32.

    Frequency k (k = 0 .. half_dim - 1) is `max_period ** (-k / (half_dim - freq_shift))`. Ho et al. use
    `freq_shift=1` and the order `[sin, cos]` (`flip_sin_to_cos=False`).

    Args:
        timesteps (`torch.Tensor` of shape `(batch_size,)`): the timesteps, integer or fractional.
        embedding_dim (`int`): size of the embedding; an odd size is zero-padded by one.
        flip_sin_to_cos (`bool`): put the cosines first (`[cos, sin]`).
        freq_shift (`float`): shift of the denominator of the frequency exponent.
        max_period (`float`): the longest period.

    Returns:
        `torch.Tensor` of shape `(batch_size, embedding_dim)`, float32.
    """
    half_dim = embedding_dim // 2
    exponent = -math.log(max_period) * torch.arange(half_dim, dtype=torch.float32, device=timesteps.device)
    exponent = exponent / (half_dim - freq_shift)
    angles = timesteps[:, None].float() * torch.exp(exponent)[None, :]  # (B, half_dim)
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)  # (B, 2 * half_dim)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half_dim:], emb[:, :half_dim]], dim=-1)
    if embedding_dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


def _silu_fresh(tensor: torch.Tensor) -> torch.Tensor:
    """
    SiLU of a tensor nobody else holds (a fresh GroupNorm output): in place when no gradient flows through it (saves
    an allocation and a pass over memory); out of place under autograd, where an in-place SiLU would only make
    autograd keep a copy of its input.
    """
    return F.silu(tensor, inplace=not tensor.requires_grad)


def _add_into(tensor: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """
    `tensor + other` for an `other` that broadcasts to `tensor`'s shape, written into `tensor` when that gives the same
    result (same dtype: under autocast a float32 `other` would promote the sum).
    """
    return tensor.add_(other) if other.dtype == tensor.dtype else tensor + other


class DDPMTimestepMLP(nn.Module):
    """The timestep MLP of Ho et al.: `Linear -> SiLU -> Linear`, from the sinusoidal embedding to `temb`."""

    def __init__(self, in_features: int, time_embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, time_embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """`(batch_size, in_features)` -> `(batch_size, time_embed_dim)`."""
        return self.linear_2(self.act(self.linear_1(emb)))


class DDPMResnetBlock2D(nn.Module):
    """
    Wide-ResNet block of Ho et al. with the timestep added between the two convolutions.

    `h = conv1(SiLU(GN(x))) + Linear(SiLU(temb))`, `h = conv2(dropout(SiLU(GN(h))))`, output `shortcut(x) + h`,
    where `shortcut` is a 1x1 convolution when the channel count changes ("NIN shortcut") and the identity otherwise.
    With `time_scale_shift="scale_shift"` (Nichol & Dhariwal's variant) the timestep instead modulates the second
    normalisation: `GN(h) * (1 + scale) + shift`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        time_scale_shift: Literal["default", "scale_shift"] = "default",
    ):
        super().__init__()
        self.time_scale_shift = time_scale_shift
        self.norm1 = nn.GroupNorm(norm_num_groups, in_channels, eps=norm_eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        temb_out = 2 * out_channels if time_scale_shift == "scale_shift" else out_channels
        self.time_emb_proj = nn.Linear(temb_channels, temb_out)
        self.norm2 = nn.GroupNorm(norm_num_groups, out_channels, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(batch_size, in_channels, height, width)`).
            temb (`torch.Tensor` of shape `(batch_size, temb_channels)`): the output of the timestep MLP.

        Returns:
            `torch.Tensor` of shape `(batch_size, out_channels, height, width)`.
        """
        # SiLU and adds in place on fresh GroupNorm / convolution outputs: one allocation and one pass over memory less
        # each (convolutions do not keep their outputs for backward, so the adds are safe under autograd too)
        h = self.conv1(_silu_fresh(self.norm1(hidden_states)))
        temb = self.time_emb_proj(F.silu(temb))[:, :, None, None]  # (B, C or 2C, 1, 1)
        if self.time_scale_shift == "scale_shift":
            scale, shift = temb.chunk(2, dim=1)
            h = torch.addcmul(shift, self.norm2(h), 1 + scale)  # GN(h) * (1 + scale) + shift
        else:
            h = self.norm2(_add_into(h, temb))
        h = self.conv2(self.dropout(_silu_fresh(h)))
        shortcut = hidden_states if self.conv_shortcut is None else self.conv_shortcut(hidden_states)
        return _add_into(h, shortcut)


class DDPMAttnBlock2D(nn.Module):
    """
    Self-attention over all pixels with a residual connection (Ho et al., Appendix B; from the Self-Attention GAN).

    `x + to_out(attention(to_q(GN(x)), to_k(GN(x)), to_v(GN(x))))`, computed with
    `torch.nn.functional.scaled_dot_product_attention`; `head_dim=None` gives one head over all channels (Ho et al.).
    """

    def __init__(self, channels: int, head_dim: int | None = None, norm_num_groups: int = 32, norm_eps: float = 1e-6):
        super().__init__()
        self.heads = 1 if head_dim is None else channels // head_dim
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=norm_eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(batch_size, channels, height, width)` -> same shape."""
        batch_size, channels, height, width = hidden_states.shape
        # (B, HW, C), made contiguous once here rather than by each of the three projections (a view in channels-last)
        h = self.norm(hidden_states).flatten(2).transpose(1, 2).contiguous()
        q, k, v = (
            proj(h).view(batch_size, height * width, self.heads, -1).transpose(1, 2)  # (B, nh, HW, hs)
            for proj in (self.to_q, self.to_k, self.to_v)
        )
        h = F.scaled_dot_product_attention(q, k, v)  # (B, nh, HW, hs)
        h = h.transpose(1, 2).reshape(batch_size, height * width, channels)  # (B, HW, C)
        h = self.to_out(h).transpose(1, 2).reshape(batch_size, channels, height, width)
        return hidden_states + h


class DDPMDownsample2D(nn.Module):
    """
    Halves the resolution with a 3x3 convolution of stride 2.

    `padding=1` pads one pixel on every side; `padding=0` pads one pixel on the right and bottom only, which is
    TensorFlow's "SAME" padding used by the original DDPM code (and by the published `google/ddpm-*` checkpoints).
    """

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(batch_size, channels, height, width)` -> `(batch_size, channels, height // 2, width // 2)`."""
        if self.padding == 0:
            hidden_states = F.pad(hidden_states, (0, 1, 0, 1))
        return self.conv(hidden_states)


class DDPMUpsample2D(nn.Module):
    """Doubles the resolution: nearest-neighbour upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(batch_size, channels, height, width)` -> `(batch_size, channels, 2 * height, 2 * width)`."""
        return self.conv(F.interpolate(hidden_states, scale_factor=2.0, mode="nearest"))


class DDPMLevel(nn.Module):
    """
    The modules of one resolution level of one path: ResNet blocks, optional attention after each, and a resampler.

    A container only: `DDPMUNet2DModel.forward` runs the levels, so the data flow reads top to bottom in one place.
    """

    def __init__(self, resnets: list[nn.Module], attentions: list[nn.Module], resample: nn.Module | None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions)  # empty, or one per ResNet block
        self.resample = resample


class DDPMMidBlock2D(nn.Module):
    """The middle of the UNet at the lowest resolution: ResNet block, self-attention, ResNet block."""

    def __init__(self, resnets: list[nn.Module], attention: nn.Module | None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attention = attention


class DDPMUNet2DModel(ModelMixin, ConfigMixin):
    r"""
    The DDPM noise predictor `eps_theta(x_t, t)`: the UNet of Ho et al. (2020), Appendix B.

    Level `i` (i = 0 .. len(channel_mult) - 1) works at resolution `sample_size / 2**i` with
    `model_channels * channel_mult[i]` channels: `layers_per_block` ResNet blocks on the way down and
    `layers_per_block + 1` on the way up (each consuming one concatenated skip connection), self-attention after each
    of them when the level's resolution is in `attention_resolutions`, a strided-conv downsample / nearest + conv
    upsample between levels, and a middle block (ResNet, attention, ResNet) at the bottom.

    The defaults are Ho et al.'s CIFAR-10 model (35.7M parameters).

    Parameters:
        sample_size (`int`, defaults to 32): height and width of the training samples. Only used to place attention
            (see `attention_resolutions`); any input whose sides are divisible by `2 ** (len(channel_mult) - 1)` works.
        in_channels (`int`, defaults to 3): channels of `x_t`.
        out_channels (`int`, *optional*): channels of the predicted noise; defaults to `in_channels`.
        model_channels (`int`, defaults to 128): channels of the first level (Ho's `ch`).
        channel_mult (`tuple[int, ...]`, defaults to `(1, 2, 2, 2)`): channel multiplier of each level; the number
            of levels is its length.
        layers_per_block (`int`, defaults to 2): ResNet blocks per level on the down path (Ho's `num_res_blocks`).
        attention_resolutions (`tuple[int, ...]`, defaults to `(16,)`): feature-map sizes, in pixels for an input of
            `sample_size`, at which self-attention follows each ResNet block. Each must be a level's resolution.
        dropout (`float`, defaults to 0.0): dropout before the second convolution of every ResNet block (Ho et al.
            use 0.1 on CIFAR-10).
        norm_num_groups (`int`, defaults to 32): GroupNorm groups; must divide every level's channel count.
        norm_eps (`float`, defaults to 1e-6): GroupNorm epsilon (1e-6 as in Ho et al.'s TensorFlow code).
        attention_head_dim (`int`, *optional*): channels per attention head; `None` is one head over all channels.
        mid_block_attention (`bool`, defaults to `True`): self-attention in the middle block.
        time_embedding_dim (`int`, *optional*): width of the timestep MLP; defaults to `4 * model_channels`.
        flip_sin_to_cos (`bool`, defaults to `False`): sinusoidal embedding order `[cos, sin]` instead of `[sin, cos]`.
        freq_shift (`float`, defaults to 1.0): frequency exponent denominator `half_dim - freq_shift` (Ho: 1).
        downsample_padding (`int`, defaults to 1): 1 pads the stride-2 convolution symmetrically; 0 pads right and
            bottom only (TensorFlow "SAME", as in the original DDPM checkpoints).
        resnet_time_scale_shift (`str`, defaults to `"default"`): `"default"` adds the projected timestep to the
            hidden state (Ho et al.); `"scale_shift"` modulates the second GroupNorm (Nichol & Dhariwal).
        learned_variance (`bool`, defaults to `False`): also predict the variance interpolation `v` of ND (15); the
            output then has `2 * out_channels` channels, `[eps, v]` along the channel axis.
    """

    _supports_gradient_checkpointing = True
    _skip_layerwise_casting_patterns = ["norm"]

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 3,
        out_channels: int | None = None,
        model_channels: int = 128,
        channel_mult: tuple[int, ...] = (1, 2, 2, 2),
        layers_per_block: int = 2,
        attention_resolutions: tuple[int, ...] = (16,),
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        attention_head_dim: int | None = None,
        mid_block_attention: bool = True,
        time_embedding_dim: int | None = None,
        flip_sin_to_cos: bool = False,
        freq_shift: float = 1.0,
        downsample_padding: int = 1,
        resnet_time_scale_shift: Literal["default", "scale_shift"] = "default",
        learned_variance: bool = False,
    ):
        super().__init__()
        channel_mult = tuple(channel_mult)
        attention_resolutions = tuple(attention_resolutions)
        out_channels = in_channels if out_channels is None else out_channels
        _check_config(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            model_channels=model_channels,
            channel_mult=channel_mult,
            layers_per_block=layers_per_block,
            attention_resolutions=attention_resolutions,
            dropout=dropout,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            attention_head_dim=attention_head_dim,
            mid_block_attention=mid_block_attention,
            time_embedding_dim=time_embedding_dim,
            downsample_padding=downsample_padding,
            resnet_time_scale_shift=resnet_time_scale_shift,
        )
        num_levels = len(channel_mult)
        level_channels = [model_channels * m for m in channel_mult]
        time_embed_dim = time_embedding_dim or 4 * model_channels
        self.gradient_checkpointing = False

        def resnet(c_in: int, c_out: int) -> DDPMResnetBlock2D:
            return DDPMResnetBlock2D(
                c_in, c_out, time_embed_dim, dropout, norm_num_groups, norm_eps, resnet_time_scale_shift
            )

        def attention(channels: int) -> DDPMAttnBlock2D:
            return DDPMAttnBlock2D(channels, attention_head_dim, norm_num_groups, norm_eps)

        # timestep t -> sinusoidal embedding (model_channels) -> MLP -> temb (time_embed_dim)
        self.time_embedding = DDPMTimestepMLP(model_channels, time_embed_dim)
        self.conv_in = nn.Conv2d(in_channels, model_channels, kernel_size=3, padding=1)

        # down path; `skip_channels` records the channels of every tensor pushed on the skip stack
        skip_channels = [model_channels]
        self.down_levels = nn.ModuleList()
        channels = model_channels
        for level in range(num_levels):
            use_attention = sample_size // 2**level in attention_resolutions
            resnets, attentions = [], []
            for _ in range(layers_per_block):
                resnets.append(resnet(channels, level_channels[level]))
                channels = level_channels[level]
                if use_attention:
                    attentions.append(attention(channels))
                skip_channels.append(channels)
            downsample = None
            if level != num_levels - 1:
                downsample = DDPMDownsample2D(channels, downsample_padding)
                skip_channels.append(channels)
            self.down_levels.append(DDPMLevel(resnets, attentions, downsample))

        self.mid_block = DDPMMidBlock2D(
            [resnet(channels, channels), resnet(channels, channels)],
            attention(channels) if mid_block_attention else None,
        )

        # up path, stored by level (up_levels[0] is full resolution) and run from the lowest resolution upwards
        up_levels = []
        for level in reversed(range(num_levels)):
            use_attention = sample_size // 2**level in attention_resolutions
            resnets, attentions = [], []
            for _ in range(layers_per_block + 1):
                resnets.append(resnet(channels + skip_channels.pop(), level_channels[level]))
                channels = level_channels[level]
                if use_attention:
                    attentions.append(attention(channels))
            upsample = DDPMUpsample2D(channels) if level != 0 else None
            up_levels.append(DDPMLevel(resnets, attentions, upsample))
        self.up_levels = nn.ModuleList(reversed(up_levels))

        self.norm_out = nn.GroupNorm(norm_num_groups, model_channels, eps=norm_eps)
        self.conv_out = nn.Conv2d(
            model_channels, out_channels * (2 if learned_variance else 1), kernel_size=3, padding=1
        )

    @property
    def num_levels(self) -> int:
        """Number of resolution levels (`len(config.channel_mult)`)."""
        return len(self.config.channel_mult)

    def _run(self, module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        """Calls `module(*args)`, through gradient checkpointing when it is enabled and gradients are recorded."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(module, *args)
        return module(*args)

    def _check_sample(self, sample: torch.Tensor) -> None:
        if not isinstance(sample, torch.Tensor) or sample.ndim != 4:
            shape = tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample).__name__
            raise ValueError(f"`sample` must be a 4-D tensor (batch_size, num_channels, height, width), got {shape}.")
        if sample.shape[1] != self.config.in_channels:
            raise ValueError(
                f"`sample` has {sample.shape[1]} channels (shape {tuple(sample.shape)}), but the model was "
                f"configured with in_channels={self.config.in_channels}."
            )
        factor = 2 ** (self.num_levels - 1)
        height, width = sample.shape[-2:]
        if height % factor or width % factor:
            raise ValueError(
                f"`sample` height and width ({height}, {width}) must be divisible by {factor} "
                f"(2 ** (len(channel_mult) - 1) for channel_mult={tuple(self.config.channel_mult)})."
            )

    def _timesteps_for_batch(self, timestep: torch.Tensor | float | int, sample: torch.Tensor) -> torch.Tensor:
        """Returns the timesteps as a `(batch_size,)` tensor on the sample's device."""
        batch_size = sample.shape[0]
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], dtype=torch.float32, device=sample.device)
        timestep = timestep.to(sample.device).reshape(-1)
        if timestep.numel() == 1:
            return timestep.expand(batch_size)
        if timestep.numel() != batch_size:
            raise ValueError(
                f"`timestep` must be a scalar or have one value per sample ({batch_size}), got {timestep.numel()}."
            )
        return timestep

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        return_dict: bool = True,
    ) -> UNet2DOutput | tuple[torch.Tensor]:
        r"""
        Predicts the noise `eps_theta(x_t, t)` (and, with `learned_variance`, the interpolation `v` of ND (15)).

        Args:
            sample (`torch.Tensor` of shape `(batch_size, in_channels, height, width)`): the noisy sample `x_t`;
                height and width must be divisible by `2 ** (len(channel_mult) - 1)`.
            timestep (`torch.Tensor`, `float` or `int`): diffusers' timestep index `t` (0 .. T - 1): a number, a 0-d
                tensor or a `(batch_size,)` tensor.
            return_dict (`bool`, defaults to `True`): return a `UNet2DOutput` rather than a tuple.

        Returns:
            `UNet2DOutput` whose `.sample` has shape `(batch_size, out_channels, height, width)`, or
            `(batch_size, 2 * out_channels, height, width)` with `learned_variance` (`[eps, v]`); or the tuple
            `(sample,)` when `return_dict=False`.

        Example:

        ```py
        >>> import torch
        >>> from ddpm_plugin import DDPMUNet2DModel

        >>> unet = DDPMUNet2DModel(sample_size=32, in_channels=1, model_channels=32, channel_mult=(1, 2, 2),
        ...                        attention_resolutions=(8,))
        >>> eps = unet(torch.randn(4, 1, 32, 32), 999).sample
        >>> eps.shape
        torch.Size([4, 1, 32, 32])

        ```
        """
        self._check_sample(sample)

        # 1. timestep embedding: sinusoids in float32, then the MLP in the model's dtype
        timesteps = self._timesteps_for_batch(timestep, sample)
        t_emb = get_timestep_embedding(
            timesteps, self.config.model_channels, self.config.flip_sin_to_cos, self.config.freq_shift
        )
        # the MLP's own dtype (`self.dtype` walks the parameters: ~5% of a small model's call on a CPU)
        temb = self.time_embedding(t_emb.to(dtype=self.time_embedding.linear_1.weight.dtype))  # (B, time_embed_dim)

        # 2. down path, pushing every intermediate feature map on the skip stack
        h = self.conv_in(sample)
        skips = [h]
        for down in self.down_levels:
            for i, resnet in enumerate(down.resnets):
                h = self._run(resnet, h, temb)
                if len(down.attentions) > 0:
                    h = self._run(down.attentions[i], h)
                skips.append(h)
            if down.resample is not None:
                h = down.resample(h)
                skips.append(h)

        # 3. middle: ResNet, attention, ResNet
        h = self._run(self.mid_block.resnets[0], h, temb)
        if self.mid_block.attention is not None:
            h = self._run(self.mid_block.attention, h)
        h = self._run(self.mid_block.resnets[1], h, temb)

        # 4. up path, from the lowest resolution, concatenating one skip per ResNet block
        for up in reversed(self.up_levels):
            for i, resnet in enumerate(up.resnets):
                h = self._run(resnet, torch.cat([h, skips.pop()], dim=1), temb)
                if len(up.attentions) > 0:
                    h = self._run(up.attentions[i], h)
            if up.resample is not None:
                h = up.resample(h)

        # 5. output head
        h = self.conv_out(F.silu(self.norm_out(h)))

        if not return_dict:
            return (h,)
        return UNet2DOutput(sample=h)

    @classmethod
    def from_diffusers_unet(cls, unet: "UNet2DModel", learned_variance: bool = False) -> "DDPMUNet2DModel":
        """
        Converts a `diffusers.UNet2DModel` in the DDPM layout (e.g. `google/ddpm-cifar10-32`) to this class, computing
        the same function; the weights are renamed by `ddpm_plugin.models.convert.unet2d_state_dict_to_ddpm`.

        Args:
            unet (`diffusers.UNet2DModel`): the source model.
            learned_variance (`bool`): the source predicts `[eps, v]` (ND (15)) in its `out_channels`.

        Returns:
            `DDPMUNet2DModel` with the source's dtype and device, in eval mode.

        Raises:
            `ValueError`: the source is not a `UNet2DModel`, its layout is not the DDPM one, or its weights do not
            match (a source weight unused, a weight of the new model not filled, or shapes that disagree).
        """
        config, converted = unet2d_state_dict_to_ddpm(unet, learned_variance=learned_variance)
        model = cls(**config)
        target = model.state_dict()
        missing = sorted(set(target) - set(converted))
        extra = sorted(set(converted) - set(target))
        if missing or extra:
            raise ValueError(
                f"The converted weights do not fit DDPMUNet2DModel: missing {missing}, unexpected {extra}."
            )
        bad_shapes = {
            k: (tuple(v.shape), tuple(target[k].shape)) for k, v in converted.items() if v.shape != target[k].shape
        }
        if bad_shapes:
            raise ValueError(f"Weight shapes differ (UNet2DModel, DDPMUNet2DModel): {bad_shapes}.")
        model.load_state_dict(converted, strict=True)
        param = next(unet.parameters())
        model.to(param.device)
        if param.dtype != model.dtype:
            model.to(dtype=param.dtype)
        return model.eval()


def convert_unet2d_to_ddpm(unet: "UNet2DModel", learned_variance: bool = False) -> DDPMUNet2DModel:
    """`DDPMUNet2DModel.from_diffusers_unet(unet, learned_variance)`: a `diffusers.UNet2DModel` in the DDPM layout
    converted to a `DDPMUNet2DModel` computing the same function."""
    return DDPMUNet2DModel.from_diffusers_unet(unet, learned_variance=learned_variance)


def _check_config(
    *,
    sample_size: int,
    in_channels: int,
    out_channels: int,
    model_channels: int,
    channel_mult: tuple[int, ...],
    layers_per_block: int,
    attention_resolutions: tuple[int, ...],
    dropout: float,
    norm_num_groups: int,
    norm_eps: float,
    attention_head_dim: int | None,
    mid_block_attention: bool,
    time_embedding_dim: int | None,
    downsample_padding: int,
    resnet_time_scale_shift: str,
) -> None:
    """Raises `ValueError` naming the first bad hyperparameter of `DDPMUNet2DModel` and what is allowed."""

    def positive_int(name: str, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")

    for name, value in [
        ("sample_size", sample_size),
        ("in_channels", in_channels),
        ("out_channels", out_channels),
        ("model_channels", model_channels),
        ("layers_per_block", layers_per_block),
        ("norm_num_groups", norm_num_groups),
    ]:
        positive_int(name, value)
    if len(channel_mult) == 0:
        raise ValueError("`channel_mult` must name at least one level, got ().")
    for m in channel_mult:
        positive_int(f"channel_mult entry (in {channel_mult})", m)
    if time_embedding_dim is not None:
        positive_int("time_embedding_dim", time_embedding_dim)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1), got {dropout!r}.")
    if not norm_eps > 0:
        raise ValueError(f"`norm_eps` must be positive, got {norm_eps!r}.")
    if downsample_padding not in (0, 1):
        raise ValueError(f"`downsample_padding` must be 0 or 1, got {downsample_padding!r}.")
    if resnet_time_scale_shift not in ("default", "scale_shift"):
        raise ValueError(
            f"`resnet_time_scale_shift` must be 'default' or 'scale_shift', got {resnet_time_scale_shift!r}."
        )

    level_channels = [model_channels * m for m in channel_mult]
    for channels in level_channels:
        if channels % norm_num_groups:
            raise ValueError(
                f"Every level's channel count must be divisible by norm_num_groups={norm_num_groups}, but "
                f"model_channels={model_channels} * channel_mult={channel_mult} gives {channels}."
            )

    factor = 2 ** (len(channel_mult) - 1)
    if sample_size % factor:
        raise ValueError(
            f"`sample_size`={sample_size} must be divisible by {factor} (2 ** (len(channel_mult) - 1) for "
            f"channel_mult={channel_mult})."
        )
    resolutions = [sample_size // 2**level for level in range(len(channel_mult))]
    for res in attention_resolutions:
        if res not in resolutions:
            raise ValueError(
                f"attention_resolutions entry {res!r} is not the resolution of any level; with sample_size="
                f"{sample_size} and {len(channel_mult)} levels the resolutions are {resolutions}."
            )

    if attention_head_dim is not None:
        positive_int("attention_head_dim", attention_head_dim)
        attn_channels = [c for c, r in zip(level_channels, resolutions, strict=True) if r in attention_resolutions]
        if mid_block_attention:
            attn_channels.append(level_channels[-1])
        for channels in attn_channels:
            if channels % attention_head_dim:
                raise ValueError(
                    f"attention_head_dim={attention_head_dim} must divide the channels ({channels}) of every "
                    "attention block."
                )
