"""Two-process data-parallel training on CPU: `torchrun --nproc_per_node 2 -m training` (accelerate over gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import require_or_skip

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / "torchrun"


def _records(path: Path) -> tuple[dict[int, list[int]], dict]:
    batches, final = {}, None
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "final_step" in record:
            final = record
        else:
            batches[record["micro"] + 1000 * record["step"]] = record["indices"]
    return batches, final


def test_two_processes_see_different_data_and_end_identical(tmp_path, bit_exact):
    require_or_skip(path=TORCHRUN, install="torchrun comes with torch, next to this Python")
    out = tmp_path / "ddp"
    command = [
        str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "training",
        "--output_dir", str(out), "--max_train_samples", "32", "--train_batch_size", "4", "--max_train_steps", "6",
        "--model_channels", "8", "--norm_num_groups", "4", "--channel_mult", "1", "2", "--attention_resolutions", "14",
        "--layers_per_block", "1", "--num_train_timesteps", "50", "--default_num_inference_steps", "2",
        "--checkpointing_steps", "3", "--sample_steps", "0", "--eval_steps", "0", "--final_eval_num_images", "0",
        "--card_grid_inference_steps", "1", "--report_to", "none", "--no-progress_bar", "--lr_warmup_steps", "0",
        "--random_flip", "--debug_record_batches",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    batches0, final0 = _records(out / "debug" / "batches_rank0.jsonl")
    batches1, final1 = _records(out / "debug" / "batches_rank1.jsonl")
    assert batches0.keys() == batches1.keys() and len(batches0) == 6
    for key in batches0:
        assert len(batches0[key]) == len(batches1[key]) == 4
        assert not set(batches0[key]) & set(batches1[key]), f"both processes got the same images at {key}"
    # 32 images / (2 processes x 4) = 4 steps per epoch: the first epoch covers every image exactly once
    first_epoch = [i for key in sorted(batches0)[:4] for i in batches0[key] + batches1[key]]
    assert sorted(first_epoch) == list(range(32))
    # gradients were all-reduced: both processes end with the same weights and EMA
    assert final0["final_step"] == final1["final_step"] == 6
    assert final0["weights_sha256"] == final1["weights_sha256"]
    # one checkpoint per save (main process), with both processes' RNG and generator states
    checkpoint = out / "checkpoints" / "checkpoint-6"
    for name in ("random_states_0.pkl", "random_states_1.pkl", "trainer_state_0.pt", "trainer_state_1.pt"):
        assert (checkpoint / name).is_file(), name
    assert (out / "pipeline" / "model_index.json").is_file()
