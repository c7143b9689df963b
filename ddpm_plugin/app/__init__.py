# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""Non-UI helpers of the Gradio app (`app.py`), one concern per module:

- `access`: what a visitor may load (the app's `ddpm_plugin.resolve.ModelPolicy`), the one refusal message, server
  paths taken out of messages, the bounded pipeline cache;
- `limits`: the operator's settings (flags, environment variables) and the per-run compute budget;
- `fairness`, `jobs`, `uploads`: the queue shared between visitors, jobs that end on time, checked uploads;
- `runs`: the per-run pipeline copies, with the visitor's sampler, that let several visitors sample at once;
- `render`: tensors and previews as small uint8 grids;
- `inputs`: the held-out digits and uploaded images as model inputs;
- `analysis`: the forward process, the latent space, the signal-to-noise ratio and the likelihood.

Nothing here imports gradio; user mistakes raise `ValueError` naming the bad value (the app turns them into
`gr.Error`). The names below are re-exported, so `from ddpm_plugin import app as support; support.make_grid(...)`.
"""

from .analysis import encode_decode, forward_process, likelihood, signal_to_noise_ratio
from .inputs import digits_by_index, heldout_digits, load_image_file, to_model_input
from .limits import MAX_BATCH_SIZE, MAX_STEPS
from .render import (
    PreviewRenderer,
    images_to_uint8,
    latents_to_display,
    latents_to_uint8,
    make_grid,
    model_summary,
    pipeline_image_shape,
    tensor_to_uint8,
)
from .runs import SAMPLERS, default_sampler_label, make_run_pipeline, make_scheduler

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_STEPS",
    "SAMPLERS",
    "PreviewRenderer",
    "default_sampler_label",
    "digits_by_index",
    "encode_decode",
    "forward_process",
    "heldout_digits",
    "images_to_uint8",
    "latents_to_display",
    "latents_to_uint8",
    "likelihood",
    "load_image_file",
    "make_grid",
    "make_run_pipeline",
    "make_scheduler",
    "model_summary",
    "pipeline_image_shape",
    "signal_to_noise_ratio",
    "tensor_to_uint8",
    "to_model_input",
]
