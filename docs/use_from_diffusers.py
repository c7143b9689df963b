from diffusers import DDIMScheduler, DiffusionPipeline

import ddpm_plugin  # noqa: F401  (registers PixelDDPMPipeline and LatentDDPMPipeline with diffusers)

pipe = DiffusionPipeline.from_pretrained("your-name/ddpm-mnist")  # a Hub id, or a folder written by save_pretrained
pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # any diffusers scheduler swaps in
images = pipe(batch_size=4, num_inference_steps=50).images  # a list of PIL images
