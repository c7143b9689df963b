"""`ddpm_plugin.precision`: bf16 only where torch sees native support, pinned by DDPM_DTYPE."""

import os
import subprocess
import sys

import pytest
import torch

from ddpm_plugin import precision
from ddpm_plugin.precision import bf16_is_native, default_dtype, resolve_dtype


@pytest.fixture
def native_cpu(monkeypatch):
    """A CPU on which every signal says bf16 is native; each test then turns one off."""
    monkeypatch.delenv("DDPM_DTYPE", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True, "amx_bf16": False})
    monkeypatch.setattr(precision.torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    return monkeypatch


def test_native_cpu_defaults_to_bf16(native_cpu):
    assert bf16_is_native("cpu") and bf16_is_native(None)
    assert default_dtype("cpu") is torch.bfloat16


@pytest.mark.parametrize("capability", ["DEFAULT", "AVX2"])
def test_aten_capability_below_avx512_turns_bf16_off(native_cpu, capability):
    native_cpu.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert not bf16_is_native("cpu")
    assert default_dtype("cpu") is torch.float32


def test_cpu_without_bf16_instructions_is_not_native(native_cpu):
    native_cpu.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": False})
    assert not bf16_is_native("cpu")
    native_cpu.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": True})
    assert bf16_is_native("cpu")  # AMX-BF16 alone counts


def test_onednn_without_bf16_is_not_native(native_cpu):
    native_cpu.setattr(precision.torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert not bf16_is_native("cpu")


@pytest.mark.parametrize(
    "variable, value, native",
    [
        ("ONEDNN_MAX_CPU_ISA", "SSE41", False),
        ("ONEDNN_MAX_CPU_ISA", "AVX2", False),
        ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE", False),
        ("ONEDNN_MAX_CPU_ISA", "avx512_core_vnni", False),
        ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", True),
        ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX", True),
        ("ONEDNN_MAX_CPU_ISA", "ALL", True),
        ("ONEDNN_MAX_CPU_ISA", "NOT_AN_ISA", True),  # oneDNN ignores an unknown value
        ("DNNL_MAX_CPU_ISA", "AVX2", False),
    ],
)
def test_onednn_isa_cap_decides(native_cpu, variable, value, native):
    native_cpu.setenv(variable, value)
    assert bf16_is_native("cpu") is native


def test_other_devices_are_not_native(native_cpu):
    assert not bf16_is_native("meta")
    native_cpu.setattr(torch.cuda, "is_available", lambda: False)
    assert not bf16_is_native("cuda")


@pytest.mark.parametrize("value, expected", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_environment_pins_the_dtype(native_cpu, value, expected):
    native_cpu.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")  # not native
    native_cpu.setenv("DDPM_DTYPE", value)
    assert default_dtype("cpu") is expected
    assert resolve_dtype("auto", "cpu") is expected
    assert resolve_dtype("float32", "cpu") is torch.float32  # an explicit choice is not overridden


def test_environment_auto_and_bad_values(native_cpu):
    native_cpu.setenv("DDPM_DTYPE", "auto")
    assert default_dtype("cpu") is torch.bfloat16
    native_cpu.setenv("DDPM_DTYPE", "fp8")
    with pytest.raises(ValueError, match="DDPM_DTYPE='fp8'.*'auto', 'float32', 'bfloat16'"):
        default_dtype("cpu")
    native_cpu.delenv("DDPM_DTYPE")
    with pytest.raises(ValueError, match="dtype='half' is not supported"):
        resolve_dtype("half")
    assert resolve_dtype(torch.float16) is torch.float16
    assert resolve_dtype(None, "cpu") is torch.bfloat16


CHILD = (
    "import os; from ddpm_plugin.precision import bf16_is_native, default_dtype; print(bf16_is_native(), default_dtype());"
    " os.environ['DDPM_DTYPE'] = 'bfloat16'; print(default_dtype())"
)


def _child(**env) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("DDPM_DTYPE", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
    clean.pop("ATEN_CPU_CAPABILITY", None)
    result = subprocess.run(
        [sys.executable, "-c", CHILD], env={**clean, **env}, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("env", [{"ATEN_CPU_CAPABILITY": "default"}, {"ONEDNN_MAX_CPU_ISA": "SSE41"}])
def test_torch_sees_the_environment_in_a_fresh_process(env):
    """The real signals, in a process started under each setting: both turn bf16 off whatever the CPU."""
    assert _child(**env).split() == ["False", "torch.float32", "torch.bfloat16"]
