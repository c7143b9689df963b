"""Inference pipelines (pixel and latent)."""
