"""Parity figures of GaussianDDPMScheduler vs diffusers.DDPMScheduler over the full option grid (README table).

    python benchmarks/parity_figures.py

Uses the loops of tests/test_scheduler.py: both schedulers in float32 and float64, same generator, noise drawn in float32.
"""

import itertools
import sys

import pytest

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tests"))
import test_scheduler as ts
import torch

torch.set_num_threads(1)
mp = pytest.MonkeyPatch()
import diffusers.schedulers.scheduling_ddpm as d

import ddpm_plugin.schedulers.scheduling_gaussian_ddpm as o

orig = o.randn_tensor


def randn(shape, generator=None, device=None, dtype=None, **k):
    return orig(shape, generator=generator, device=device, dtype=torch.float32).to(dtype)


mp.setattr(d, "randn_tensor", randn)
mp.setattr(o, "randn_tensor", randn)
res = {}
for T in (50, 1000):
    chains = ts.CHAINS_50 if T == 50 else [(None, "leading")]
    for sch, pred, var, clip, (n, sp) in itertools.product(
        ts.SCHEDULES, ts.PREDICTIONS, ts.VARIANCES, ts.CLIPPING, chains
    ):
        if T == 1000 and (clip != "clip" and pred != "epsilon"):
            continue
        r = ts.run_loops(ts.config(T, sch, pred, var, clip, sp), n)
        if not r[-1]:
            continue
        k = (T, clip)
        old = res.get(k, [0, 0, 0, 0])
        res[k] = [max(a, b) for a, b in zip(old, r[:4])]
for k, v in sorted(res.items()):
    print(k, "par64 %.1e par32 %.1e diffusers32_err %.1e ours32_err %.1e" % tuple(v))
