# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""Non-UI helpers of the Gradio app (`app.py`), one concern per module:

- `loading`: loading and caching pipelines, swapping samplers, the per-visitor limits;
- `runs`: the per-run pipeline copies that let several visitors sample at once, and stopping a run;
- `render`: tensors and previews as small uint8 grids;
- `inputs`: the held-out digits and uploaded images as model inputs;
- `analysis`: the forward process, the latent space, the signal-to-noise ratio and the likelihood.

Nothing here imports gradio; user mistakes raise `ValueError` naming the bad value (the app turns them into
`gr.Error`). The names below are re-exported, so `from ddpm_plugin import app as support; support.load_pipeline(...)`.
"""

from .analysis import encode_decode, forward_process, likelihood, signal_to_noise_ratio
from .inputs import digits_by_index, heldout_digits, load_image_file, to_model_input
from .loading import (
    BUNDLED_MODELS,
    MAX_BATCH_SIZE,
    MAX_STEPS,
    PIPELINE_CLASSES,
    SAMPLERS,
    PipelineCache,
    load_pipeline,
    make_scheduler,
)
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
from .runs import RunRegistry, make_run_pipeline, stop_callback

__all__ = [
    "BUNDLED_MODELS",
    "MAX_BATCH_SIZE",
    "MAX_STEPS",
    "PIPELINE_CLASSES",
    "SAMPLERS",
    "PipelineCache",
    "PreviewRenderer",
    "RunRegistry",
    "digits_by_index",
    "encode_decode",
    "forward_process",
    "heldout_digits",
    "images_to_uint8",
    "latents_to_display",
    "latents_to_uint8",
    "likelihood",
    "load_image_file",
    "load_pipeline",
    "make_grid",
    "make_run_pipeline",
    "make_scheduler",
    "model_summary",
    "pipeline_image_shape",
    "signal_to_noise_ratio",
    "stop_callback",
    "tensor_to_uint8",
    "to_model_input",
]
