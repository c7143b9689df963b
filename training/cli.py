"""Command line: `python -m training ...` / `ddpm-train ...` (flags = `TrainingConfig` fields, `--config FILE`)."""

from __future__ import annotations

import sys

from .config import parse_args

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Parses the flags, trains, prints where the results are; exits non-zero with a one-line message on bad input."""
    from .checkpoint import CheckpointError
    from .loop import NonFiniteLossError, train

    args = sys.argv[1:] if argv is None else argv
    try:
        config = parse_args(args)
        result = train(config, argv=[sys.argv[0], *args])
    except (ValueError, FileNotFoundError, CheckpointError, NonFiniteLossError) as error:
        print(f"ddpm-train: error: {error}", file=sys.stderr)
        return 2 if not isinstance(error, NonFiniteLossError) else 3
    if result.final_dir is not None:
        print(f"ddpm-train: step {result.global_step}; final folder: {result.final_dir}")
    return 0
