"""Noise predictors."""
