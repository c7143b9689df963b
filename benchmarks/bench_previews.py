# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""What step previews cost, and how soon the first one appears.

Side by side in one process, after a warm-up, alternating the variants within each repeat and reporting medians:

1. pipeline level: `pipe.iter_previews(preview_every=1)` (x_t and x0_hat as images after every step) against
   `preview_every=0` (only the final images); for a latent pipeline, whose preview images are made when read, with
   the previews unread, with the cheap approximate x0_hat read (`preview="approx"`, a linear map fitted on the VAE),
   with the VAE-decoded x0_hat read, and with both VAE-decoded x_t and x0_hat read (what every preview cost before);
2. app level: the Gradio app's `/sample` generator (`app.sample`, which also turns every preview into two upscaled
   uint8 grids) with previews every step against none, called directly (no server);
3. time to the first preview: the app generator with the model not yet loaded (load + first step) and loaded, and
   through the running server with `gradio_client` (HTTP, queue, PNG encoding).

Models: the bundled pipelines when they load, else random pipelines of the bundled configurations
(`training/configs/mnist_pixel.yaml`, `mnist_latent.yaml`, `mnist_vae.yaml`), or any folders given with --model.
Prints markdown tables.

    python benchmarks/bench_previews.py [--model bundled:pixel --model bundled:latent] [--steps 20] [--batch-size 4]
        [--no-app] [--no-server]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # app.py lives at the top level


X0_HAT = ("pred_original_sample",)  # the preview fields read in the timed runs
BOTH = ("sample", "pred_original_sample")


def random_pipeline(kind: str, folder: str) -> str:
    """A random pipeline with the bundled model's configuration, saved to `folder`."""
    from diffusers import AutoencoderKL

    from ddpm_plugin import DDPMUNet2DModel, GaussianDDPMScheduler, LatentDDPMPipeline, PixelDDPMPipeline

    torch.manual_seed(0)
    if kind == "pixel":
        unet = DDPMUNet2DModel(
            sample_size=28,
            in_channels=1,
            model_channels=32,
            channel_mult=(1, 2, 2),
            layers_per_block=2,
            attention_resolutions=(7,),
            norm_num_groups=8,
        )
        pipe = PixelDDPMPipeline(unet=unet, scheduler=GaussianDDPMScheduler(num_train_timesteps=1000))
    else:
        vae = AutoencoderKL(
            in_channels=1,
            out_channels=1,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=32,
            sample_size=28,
        )
        unet = DDPMUNet2DModel(
            sample_size=7,
            in_channels=4,
            model_channels=96,
            channel_mult=(1,),
            layers_per_block=2,
            attention_resolutions=(7,),
            norm_num_groups=32,
        )
        pipe = LatentDDPMPipeline(
            vae=vae, unet=unet, scheduler=GaussianDDPMScheduler(num_train_timesteps=1000, clip_sample=False)
        )
    path = os.path.join(folder, f"random-{kind}")
    pipe.save_pretrained(path)
    return path


def default_models(folder: str) -> list[tuple[str, str]]:
    """(label, model id) of the bundled models, or of random stand-ins where a bundled one does not load."""
    from ddpm_plugin.resolve import load_pipeline

    models = []
    for kind in ("pixel", "latent"):
        try:
            load_pipeline(f"bundled:{kind}")
            models.append((f"bundled {kind}", f"bundled:{kind}"))
        except ValueError as err:
            print(f"(bundled:{kind} does not load: {str(err)[:100]}...; using a random {kind} pipeline)")
            models.append((f"random {kind} (bundled config)", random_pipeline(kind, folder)))
    return models


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def side_by_side(variants: dict, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each variant, alternating them within each repeat."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times = {name: [] for name in variants}
    for r in range(repeats):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            times[name].append(timed(variants[name]))
    return {name: statistics.median(t) for name, t in times.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", help="model id (repeatable); default: bundled or random stand-ins")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-server", action="store_true", help="skip the time to first preview through HTTP")
    parser.add_argument("--no-app", action="store_true", help="pipeline level only (no app rows, no first preview)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import app

    folder = tempfile.mkdtemp(prefix="bench_previews_")
    models = [(m, m) for m in args.model] if args.model else default_models(folder)
    # the random stand-ins and the folders given are models the app may load
    local = tuple(os.path.abspath(m) for _, m in models if os.path.isdir(m))
    app.configure(dataclasses.replace(app.SETTINGS, model_dirs=(*app.SETTINGS.model_dirs, folder, *local)))
    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
        f"{args.steps} steps, batch {args.batch_size}, {args.repeats} repeats (median), DDPM ancestral\n"
    )

    rows = []
    for label, model in models:
        pipe = app.load_model(model)

        def run_pipeline(preview_every: int, preview: str = "full", read: tuple[str, ...] = (), pipe=pipe) -> None:
            generator = torch.Generator().manual_seed(0)
            for item in pipe.iter_previews(
                batch_size=args.batch_size,
                generator=generator,
                num_inference_steps=args.steps,
                preview_every=preview_every,
                output_type="np",
                preview=preview,
            ):
                for name in read:
                    getattr(item, name)

        def run_app(preview_every: int, model=model) -> None:
            for _ in app.sample(model, "DDPM ancestral", args.steps, 0, args.batch_size, preview_every, None):
                pass

        variants = {"pipeline, none": lambda: run_pipeline(0)}
        if getattr(pipe, "vae", None) is not None:
            pipe.latent_to_image_map()  # fitted once per VAE (cached), outside the timing
            variants.update(
                {
                    "pipeline, every step: unread": lambda: run_pipeline(1),
                    "pipeline, every step: approx x0_hat": lambda: run_pipeline(1, "approx", X0_HAT),
                    "pipeline, every step: VAE x0_hat": lambda: run_pipeline(1, "full", X0_HAT),
                    "pipeline, every step: VAE x_t and x0_hat": lambda: run_pipeline(1, "full", BOTH),
                }
            )
        else:
            variants["pipeline, every step: x_t and x0_hat"] = lambda: run_pipeline(1, "full", BOTH)
        if not args.no_app:
            variants.update({"app, none": lambda: run_app(0), "app, every step": lambda: run_app(1)})
        result = side_by_side(variants, args.repeats)
        for name, seconds in result.items():
            level, _, what = name.partition(", ")
            none = result[f"{level}, none"]
            if what != "none":
                rows.append((label, level, what, none, seconds, (seconds / none - 1) * 100))

    print("| model | level | previews | no previews (s) | previews (s) | overhead |")
    print("|---|---|---|---|---|---|")
    for label, level, what, none, every, overhead in rows:
        print(f"| {label} | {level} | {what} | {none:.3f} | {every:.3f} | {overhead:+.1f}% |")

    if args.no_app:
        return
    # time to the first preview
    first_rows = []
    for label, model in models:

        def first_preview(model=model) -> float:
            start = time.perf_counter()
            stream = app.sample(model, "DDPM ancestral", args.steps, 0, args.batch_size, 1, None)
            next(stream)
            elapsed = time.perf_counter() - start
            stream.close()
            return elapsed

        app.CACHE.clear()
        cold = first_preview()
        warm = statistics.median(first_preview() for _ in range(args.repeats))
        first_rows.append([label, cold, warm, None])

    if not args.no_server:
        from gradio_client import Client

        demo = app.build_demo(settings=app.SETTINGS)
        port = free_port()
        app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            for row, (_, model) in zip(first_rows, models):
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    job = client.submit(model, "DDPM ancestral", args.steps, 0, args.batch_size, 1, api_name="/sample")
                    while not job.outputs() and not job.done():
                        time.sleep(0.002)
                    times.append(time.perf_counter() - start)
                    job.result()
                row[3] = statistics.median(times)
        finally:
            demo.close()

    print("\n| model | first preview, model not loaded (s) | first preview, loaded (s) | loaded, via HTTP (s) |")
    print("|---|---|---|---|")
    for label, cold, warm, http in first_rows:
        shown = "-" if http is None else f"{http:.3f}"
        print(f"| {label} | {cold:.3f} | {warm:.3f} | {shown} |")


if __name__ == "__main__":
    main()
