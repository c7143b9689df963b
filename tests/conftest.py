"""Shared pytest setup: tiny models run far faster on one intra-op thread than on two contended ones.

Helpers for the test modules:

- `require_or_skip(...)`: an optional test dependency (a module, a program). Missing on a developer machine, the test
  is skipped; missing under `CI=true`, it fails, so that CI cannot turn green without running the test.
- `bit_exact`: the fixture of the tests that claim bit-identical results between two runs (resume, sharded sampling,
  seeds). On the CPU a run is bit-exact for a fixed thread count with no extra setting; on a CUDA GPU, cuBLAS needs a
  fixed workspace (`CUBLAS_WORKSPACE_CONFIG=:4096:8`, inherited by subprocesses) and torch must use its deterministic
  kernels (`torch.use_deterministic_algorithms(True)`), which the fixture sets when a GPU is present.
"""

import importlib
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach the Hub
# `--dtype auto` (ddpm_plugin.precision) would pick bf16 on some CPUs only: the tests pin float32 unless they say otherwise
os.environ.setdefault("DDPM_DTYPE", "float32")

CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def in_ci() -> bool:
    """True under `CI=true` (GitHub Actions, GitLab and most CI systems set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_or_skip(*, module: str | None = None, path: str | os.PathLike | None = None, program: str | None = None,
                    install: str = ""):  # fmt: skip
    """
    The module `module` (imported and returned), the file `path` or the program `program` on PATH (its path returned).
    When it is missing the calling test (or module, at import time) is skipped, or fails under `CI=true`.
    """
    if module is not None:
        try:
            return importlib.import_module(module)
        except ImportError as error:
            what = f"the Python module {module!r} is not importable ({error})"
            found = None
    elif path is not None:
        found = Path(path) if Path(path).exists() else None
        what = f"{path} is absent"
    elif program is not None:
        found = shutil.which(program)
        what = f"the program {program!r} is not on PATH"
    else:
        raise TypeError("require_or_skip needs module=, path= or program=")
    if found is not None:
        return found
    message = what + (f": {install}" if install else "")
    if in_ci():
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message, allow_module_level=True)


@contextmanager
def cuda_bit_exact():
    """Sets, while inside, what bit-identical repeated runs need on a CUDA GPU (see the module docstring); nothing on
    the CPU."""
    if not torch.cuda.is_available():
        yield
        return
    previous_env = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    previous = torch.are_deterministic_algorithms_enabled()
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE_CONFIG
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        if previous_env is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = previous_env


@pytest.fixture
def bit_exact():
    """`cuda_bit_exact` for one test."""
    with cuda_bit_exact():
        yield


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
