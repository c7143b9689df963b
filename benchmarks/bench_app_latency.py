# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""How fast the app's cheap endpoint answers while sampling runs stream (issue "An app that can face the public").

Launches `python app.py` on a free loopback port (the operator's default settings, the bundled models), then times
`/forward_process` calls made with `gradio_client` (what a visitor's browser does: join the queue, wait for the
result, fetch the output images):

1. idle, the model already loaded;
2. while two other visitors each stream a long sampling run (bundled pixel model, DDPM ancestral 1000 steps, batch 4,
   a preview every step), both in the app's two model slots.

Both rows run in one server, one after the other; the sampling runs are stopped with `/stop` at the end. Prints a
markdown table (median and max of --calls calls per row). `--threads` sets OMP_NUM_THREADS of the server (unset:
torch's default, all cores).

    python benchmarks/bench_app_latency.py [--calls 10] [--threads 1] [--model bundled:latent]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the app exited with code {server.returncode} before serving")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the app did not answer at {url} within {timeout:.0f} s")


def forward_call(client, model: str, index: int) -> float:
    start = time.perf_counter()
    *_, info = client.predict(
        model=model, digit_index=index, upload=None, timestep=300, seed=index, api_name="/forward_process"
    )
    elapsed = time.perf_counter() - start
    if "t = 300" not in info:
        raise RuntimeError(f"unexpected forward-process answer: {info!r}")
    return elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10, help="forward-process calls per row")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the server (default: unset)")
    parser.add_argument("--model", default="bundled:latent", help="model of the forward-process calls")
    parser.add_argument("--run-model", default="bundled:pixel", help="model of the two streaming sampling runs")
    parser.add_argument("--preview-every", type=int, default=1, help="preview_every of the two sampling runs")
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error(f"--calls must be at least 1, got {args.calls}")

    from gradio_client import Client

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    server = subprocess.Popen(
        [sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rows = []
    try:
        wait_until_up(url, server)
        probe = Client(url, verbose=False)
        forward_call(probe, args.model, 0)  # loads the model
        rows.append(("idle, model loaded", [forward_call(probe, args.model, i) for i in range(1, args.calls + 1)]))

        runners = [Client(url, verbose=False) for _ in range(2)]
        runs = [
            c.submit(
                model=args.run_model,
                sampler="DDPM ancestral",
                steps=1000,
                seed=i,
                batch_size=4,
                preview_every=args.preview_every,
                api_name="/sample",
            )
            for i, c in enumerate(runners)
        ]
        deadline = time.monotonic() + 300
        while not all(len(run.outputs()) >= 2 for run in runs):
            if time.monotonic() > deadline or any(run.done() for run in runs):
                raise RuntimeError("the two sampling runs did not start streaming")
            time.sleep(0.05)
        try:
            timed = [forward_call(probe, args.model, i) for i in range(1, args.calls + 1)]
            streaming = all(not run.done() for run in runs)
        finally:
            for c in runners:
                c.predict(api_name="/stop")
        if not streaming:
            raise RuntimeError("a sampling run ended before the forward-process calls did; the row is not valid")
        rows.append(("while two sampling runs stream", timed))
    finally:
        server.terminate()
        server.wait(timeout=60)

    threads = args.threads or "default"
    print(
        f"\n### /forward_process latency ({args.model}; server threads: {threads}; {os.cpu_count()} cores; "
        f"runs: {args.run_model}, a preview every {args.preview_every} step(s))\n"
    )
    print("| condition | calls | median s | max s |")
    print("|---|---|---|---|")
    for name, times in rows:
        print(f"| {name} | {len(times)} | {statistics.median(times):.3f} | {max(times):.3f} |")


if __name__ == "__main__":
    main()
