#!/usr/bin/env bash
# GPU throughput of the trainer (fp32 / bf16 / fp16) on the bundled configs; see gpu_throughput.py.
# Usage: bash training/scripts/gpu_throughput.sh [OUT_DIR]   (on a CUDA machine, from the repository root)
set -euo pipefail
out="${1:-${OUT:-.}}"
mkdir -p "$out"
python training/scripts/gpu_throughput.py --steps "${STEPS:-200}" --out "$out/gpu_throughput.json" | tee "$out/gpu_throughput.md"
