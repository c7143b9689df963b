"""Shared pytest setup: tiny models run far faster on one intra-op thread than on two contended ones."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach the Hub
# `--dtype auto` (ddpm_plugin.precision) would pick bf16 on some CPUs only: the tests pin float32 unless they say otherwise
os.environ.setdefault("DDPM_DTYPE", "float32")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
