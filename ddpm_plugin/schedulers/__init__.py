"""Schedulers: one algorithm per file."""
