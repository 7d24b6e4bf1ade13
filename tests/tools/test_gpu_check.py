"""tools/gpu_check.py on a machine without a GPU: a clear refusal, and the plan it would run on one."""

from __future__ import annotations

import json

import pytest
import torch

from margo_dist.config import load_config

from .helpers import load_tool

gpu_check = load_tool("gpu_check")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check itself runs there")
def test_without_a_gpu_it_exits_2_and_says_why(capsys):
    assert gpu_check.main([]) == 2
    assert "no CUDA GPU is visible here" in capsys.readouterr().err


@pytest.mark.parametrize("gpus, workers, shared", [(1, 2, True), (2, 2, False), (4, 4, False)])
def test_the_runs_are_valid_configs_with_one_worker_per_gpu_or_two_sharing_one(gpus, workers, shared, tmp_path):
    steps = gpu_check.plan(gpus, str(tmp_path))
    assert [name for name, _, _ in steps] == ["contract on the GPU", "MARGO on GPU workers", "MARGO on CPU workers"]
    assert steps[0][2] == {"MARGO_TEST_DEVICE": "cuda"} and "tests/dist/test_contract.py" in steps[0][1]
    gpu = load_config("configs/default.yaml", steps[1][1][4:])
    cpu = load_config("configs/default.yaml", steps[2][1][4:])
    assert gpu.dist.workers == cpu.dist.workers == workers
    assert gpu.dist.use_gpu and not cpu.dist.use_gpu
    assert (gpu.dist.gpus_per_worker, gpu.dist.backend) == ((0.5, "gloo") if shared else (1.0, ""))
    assert gpu.train.max_epochs == cpu.train.max_epochs == 2 and gpu.run.dir != cpu.run.dir


def test_epoch_seconds_average_each_stage_without_the_start_state(tmp_path):
    records = [{"stage": "pretrain", "epoch": 1, "train_seconds": 1.0}, {"stage": "pretrain", "epoch": 2,
               "train_seconds": 3.0}, {"stage": "calibrate", "epoch": 0, "train_seconds": 0.0},
               {"stage": "calibrate", "epoch": 1, "train_seconds": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert gpu_check.epoch_seconds(str(tmp_path)) == {"pretrain": 2.0, "calibrate": 0.5}

