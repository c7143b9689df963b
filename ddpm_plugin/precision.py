# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""Which floating-point type to run the networks in: bf16 where the hardware computes it natively, else float32.

    >>> from ddpm_plugin.precision import default_dtype
    >>> pipe = load_default_pipeline("latent", torch_dtype=default_dtype("cpu"))

Only the networks (UNet, VAE) change type; the pipelines keep the latents, the noise and the scheduler's arithmetic
in float32 (see `DDPMBasePipeline._denoise`), so the schedule's precision is not lost.

How bf16 is judged native (`bf16_is_native`):

- CUDA: `torch.cuda.is_bf16_supported()` on the device.
- CPU (x86): all three of
  1. ATen dispatches to its AVX-512 kernels: `torch.backends.cpu.get_cpu_capability()` starts with `"AVX512"`
     (`ATEN_CPU_CAPABILITY=default` or `=avx2` lowers it; ATen's bf16 element-wise kernels then convert through
     float32 without native instructions);
  2. the CPU has bf16 instructions: `avx512_bf16` or `amx_bf16` in `torch.cpu.get_capabilities()` (cpuinfo, as
     torch reads it);
  3. oneDNN (the convolutions and matrix products) may use them: `torch.ops.mkldnn._is_mkldnn_bf16_supported()`
     (false when `ONEDNN_MAX_CPU_ISA` / `DNNL_MAX_CPU_ISA` is below `AVX512_CORE`) and, where one of these variables
     is set, its value is an ISA at or above `AVX512_CORE_BF16` in oneDNN's order (`AVX512_CORE` or
     `AVX512_CORE_VNNI` caps oneDNN below its bf16 kernels while torch's check above still passes). An unknown value
     is ignored, as oneDNN ignores it.
- Any other device (MPS, XPU, ...) and non-x86 CPUs: not judged native (float32).

`DDPM_DTYPE=float32|bfloat16|auto` (environment) pins the choice of `default_dtype` for users and tests.
"""

from __future__ import annotations

import os

import torch

__all__ = ["DTYPE_ENV", "DTYPE_NAMES", "add_dtype_argument", "bf16_is_native", "default_dtype", "resolve_dtype"]

DTYPE_ENV = "DDPM_DTYPE"
# names accepted by `resolve_dtype` (and the CLIs' --dtype); "auto" is `default_dtype(device)`
DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_ENV_CHOICES = ("auto", "float32", "bfloat16")

# oneDNN's CPU ISAs in increasing order (the values of ONEDNN_MAX_CPU_ISA); those from AVX512_CORE_BF16 on have bf16
_ONEDNN_ISAS = (
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
    "AVX512_CORE_BF16",
    "AVX10_1_512",
    "AVX512_CORE_FP16",
    "AVX512_CORE_AMX",
    "AVX10_1_512_AMX",
    "AVX512_CORE_AMX_FP16",
    "AVX10_1_512_AMX_FP16",
    "AVX10_2_512",
    "AVX10_2_512_AMX_2",
    "DEFAULT",
    "ALL",
)
_ONEDNN_FIRST_BF16 = _ONEDNN_ISAS.index("AVX512_CORE_BF16")


def _onednn_isa_cap_allows_bf16() -> bool:
    """False when ONEDNN_MAX_CPU_ISA (or its older name DNNL_MAX_CPU_ISA) caps oneDNN below its bf16 kernels."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    if not value or value.strip().upper() not in _ONEDNN_ISAS:
        return True
    return _ONEDNN_ISAS.index(value.strip().upper()) >= _ONEDNN_FIRST_BF16


def _cpu_has_bf16_instructions() -> bool:
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def _cpu_bf16_is_native() -> bool:
    return (
        torch.backends.cpu.get_cpu_capability().upper().startswith("AVX512")
        and _cpu_has_bf16_instructions()
        and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        and _onednn_isa_cap_allows_bf16()
    )


def bf16_is_native(device: str | torch.device | None = None) -> bool:
    """
    Whether `device` (default: the CPU) computes bfloat16 natively, as torch sees it (see the module docstring for
    the signals read). Independent of `DDPM_DTYPE`.
    """
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        with torch.cuda.device(device):
            return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return _cpu_bf16_is_native()
    return False


def default_dtype(device: str | torch.device | None = None) -> torch.dtype:
    """
    The dtype to run the networks in on `device`: `torch.bfloat16` where `bf16_is_native(device)`, else
    `torch.float32`; the environment variable `DDPM_DTYPE` (`float32`, `bfloat16` or `auto`) pins it.
    """
    choice = os.environ.get(DTYPE_ENV, "auto").strip().lower() or "auto"
    if choice not in _ENV_CHOICES:
        raise ValueError(f"{DTYPE_ENV}={choice!r} is not supported; choose one of {_ENV_CHOICES}.")
    if choice != "auto":
        return DTYPE_NAMES[choice]
    return torch.bfloat16 if bf16_is_native(device) else torch.float32


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device | None = None) -> torch.dtype:
    """
    A dtype from a CLI or app setting: `"auto"` or `None` -> `default_dtype(device)`; `"float32"`, `"bfloat16"`,
    `"float16"` (or a `torch.dtype`) as given.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return default_dtype(device)
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype={dtype!r} is not supported; choose 'auto' or one of {tuple(DTYPE_NAMES)}.")
    return DTYPE_NAMES[dtype]


def add_dtype_argument(parser, note: str = "") -> None:
    """Adds the CLIs' `--dtype auto|float32|bfloat16|float16` (default `auto`) to an `argparse` parser."""
    parser.add_argument(
        "--dtype",
        choices=("auto", *DTYPE_NAMES),
        default="auto",
        help="dtype of the networks; auto: bfloat16 where the device computes it natively, else float32 "
        f"({DTYPE_ENV}=float32|bfloat16 pins auto){note}",
    )
