#!/usr/bin/env bash
# The GPU benchmark table (benchmarks/gpu/run_gpu.py) with the repository's venv when there is one.
#   bash benchmarks/gpu/run_gpu.sh              # on a CUDA machine; writes benchmarks/gpu/RESULTS_GPU.md
#   bash benchmarks/gpu/run_gpu.sh --dry-run    # CPU smoke run, tiny sizes
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -f .venv/bin/activate ]; then
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
exec python benchmarks/gpu/run_gpu.py "$@"
