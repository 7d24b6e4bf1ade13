"""benchmarks/gpu_check.py off a GPU: a clear refusal, its Ray settings, and its own code run on the CPU at
test size."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch

from margo_dist.config import load_config

from scripts_helpers import load_script

gpu_check = load_script("benchmarks/gpu_check.py")
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check itself runs there")


@no_gpu
def test_without_a_gpu_it_exits_2_and_says_why(capsys, tmp_path):
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 2
    assert "no CUDA GPU is visible here" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("gpus, workers, shared", [(1, 2, True), (2, 2, False), (4, 4, False)])
def test_the_ray_run_has_one_worker_per_gpu_or_two_sharing_one(gpus, workers, shared):
    cfg = load_config("configs/default.yaml", gpu_check.ray_overrides(gpus))
    assert cfg.dist.workers == workers and cfg.dist.use_gpu
    assert (cfg.dist.gpus_per_worker, cfg.dist.backend) == ((0.5, "gloo") if shared else (1.0, ""))


def test_the_plan_names_every_part_with_its_limit(capsys, tmp_path):
    assert gpu_check.main(["--plan", "--root", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" ")[0] for line in lines] == gpu_check.PARTS
    assert all("--part" in line and "--device cuda" in line for line in lines)


def test_an_unknown_part_is_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--parts", "epoch,warp"])
    assert "unknown ['warp']" in capsys.readouterr().err


def test_its_parts_run_on_the_cpu_at_test_size(tmp_path, monkeypatch):
    """The check's own code (the GPU is the only difference on the device): every line PASS,
    the losses and metrics of its two trainers compared, the logs under --out, and the
    datasets it made removed."""
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    code = gpu_check.main(["--device", "cpu", "--shape", "tiny", "--parts", "epoch,sampled,knn", "--out", str(out)])
    lines = (out / "check.log").read_text().splitlines()
    assert code == 0, lines
    assert [line.split(":")[0] for line in lines[1:-1]] == [
        "PASS epoch/epoch", "PASS epoch/eval", "PASS epoch/gemm", "PASS sampled", "PASS knn"]
    assert lines[-1].startswith("5 passed, 0 failed")
    results = json.loads((out / "results.json").read_text())
    figures = results["epoch"]["figures"]
    # one process, one device: the two trainers take the same epoch exactly
    assert figures["gpu_loss"] == figures["cpu_loss"] and figures["gpu_metrics"] == figures["cpu_metrics"]
    assert results["knn"]["figures"]["recall"] == 1.0
    assert {p.name for p in out.iterdir()} == {"check.log", "results.json", "epoch.log", "sampled.log", "knn.log"}
    assert list(scratch.iterdir()) == []


@no_gpu
def test_a_failing_part_is_reported_and_the_next_one_still_runs(tmp_path):
    """Each part runs in its own process: on a host without CUDA both fail, each with its own error."""
    ctx = gpu_check.Context(tmp_path, "cuda", "tiny", tmp_path / "root")
    said: list[str] = []
    results = gpu_check.orchestrate(["knn", "sampled"], ctx, 120.0, said.append)
    assert [r["ok"] for r in results.values()] == [False, False]
    assert said[0].startswith("FAIL knn: ") and said[1].startswith("FAIL sampled: ")
    assert "not run" not in said[1] and "without a result" not in said[1]
    assert "Traceback" in Path(tmp_path / "knn.log").read_text()


def test_a_part_past_its_limit_is_stopped_and_reported(tmp_path, monkeypatch):
    monkeypatch.setitem(gpu_check.LIMITS, "epoch", 1)
    ctx = gpu_check.Context(tmp_path, "cpu", "tiny", tmp_path / "root")
    said: list[str] = []
    results = gpu_check.orchestrate(["epoch"], ctx, 60.0, said.append)
    assert not results["epoch"]["ok"] and said == ["FAIL epoch: ran past its 1 s limit (see epoch.log)"]
