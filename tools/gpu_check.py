"""The prepared GPU check: run it on a machine with one or more CUDA GPUs (under 5 minutes).

1. The exactness contract on the GPU: ``tests/dist/test_contract.py`` (one step at
   N = 2 equals the local step, ten steps stay within 1e-4) with ``MARGO_TEST_DEVICE=cuda``.
2. A 2-epoch MARGO run per stage on the built-in data through the real entry point,
   ``margo-dist train ... dist.workers=N dist.use_gpu=true``: one worker per GPU on nccl
   when there are two or more, else 2 workers sharing the one GPU
   (``dist.gpus_per_worker=0.5 dist.backend=gloo``, since nccl refuses two ranks on one
   GPU).
3. The same run on CPU workers (``dist.use_gpu=false``, gloo), then a table of seconds
   per training epoch of both runs per stage and their ratio.

    python tools/gpu_check.py                 # exit 0: all passed; 1: a step failed; 2: no GPU here
    python tools/gpu_check.py --plan --gpus 1 # the commands it would run, without running them
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 2
CPU_THREADS = 4  # per CPU worker: a GPU host has cores to spare


def gpu_workers(gpus: int) -> list[str]:
    """The GPU run's distributed settings for ``gpus`` visible GPUs."""
    if gpus >= 2:
        return [f"dist.workers={gpus}", "dist.use_gpu=true"]
    return ["dist.workers=2", "dist.use_gpu=true", "dist.gpus_per_worker=0.5", "dist.backend=gloo"]


def train_overrides(run_dir: str, gpus: int, on_gpu: bool) -> list[str]:
    """``key=value`` overrides of one check run (the GPU run, or its CPU reference)."""
    common = [f"run.dir={run_dir}", f"train.max_epochs={EPOCHS}", "train.progress=false", "run.plots=false"]
    if on_gpu:
        return [*common, *gpu_workers(gpus)]
    workers = gpu_workers(gpus)[0]
    return [*common, workers, "dist.use_gpu=false", f"dist.cpus_per_worker={CPU_THREADS}",
            f"train.threads={CPU_THREADS}"]


def plan(gpus: int, work: str) -> list[tuple[str, list[str], dict[str, str]]]:
    """(name, command, extra environment) of each step, in order."""
    cli = shutil.which("margo-dist") or "margo-dist"
    train = [cli, "train", "--config", "configs/default.yaml"]
    return [
        ("contract on the GPU", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                 "tests/dist/test_contract.py", "-k", "one_step or ten_steps"],
         {"MARGO_TEST_DEVICE": "cuda"}),
        ("MARGO on GPU workers", [*train, *train_overrides(os.path.join(work, "gpu"), gpus, True)], {}),
        ("MARGO on CPU workers", [*train, *train_overrides(os.path.join(work, "cpu"), gpus, False)], {}),
    ]


def epoch_seconds(run_dir: str) -> dict[str, float]:
    """Mean training seconds per epoch of each stage (the start-state record, epoch 0, has none)."""
    per: dict[str, list[float]] = {}
    for line in Path(run_dir, "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["epoch"] >= 1:
            per.setdefault(record["stage"], []).append(record["train_seconds"])
    return {stage: sum(v) / len(v) for stage, v in per.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", action="store_true", help="print the steps and exit")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs to plan for (default: those visible)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for all steps together")
    args = parser.parse_args(argv)
    import torch

    gpus = torch.cuda.device_count() if args.gpus is None else args.gpus
    if gpus < 1:
        print("gpu_check: no CUDA GPU is visible here (torch.cuda.device_count() == 0); run it on a GPU machine, "
              "or pass --plan --gpus N to see what it would run", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="margo-gpu-check-")
    steps = plan(gpus, work)
    if args.plan:
        for name, command, env in steps:
            print(f"{name}: {' '.join([*(f'{k}={v}' for k, v in env.items()), *command])}")
        shutil.rmtree(work)
        return 0
    print(f"gpu_check: {gpus} GPU(s): {', '.join(torch.cuda.get_device_name(i) for i in range(gpus))}", flush=True)
    deadline = time.time() + args.timeout
    try:
        for name, command, env in steps:
            t0 = time.time()
            print(f"\n== {name}: {' '.join(command)}", flush=True)
            try:
                done = subprocess.run(command, cwd=REPO, env={**os.environ, **env},
                                      timeout=max(deadline - time.time(), 1))
            except subprocess.TimeoutExpired:
                print(f"gpu_check: FAILED, {name} ran past the {args.timeout:.0f} s budget", file=sys.stderr)
                return 1
            if done.returncode != 0:
                print(f"gpu_check: FAILED, {name} exited {done.returncode}", file=sys.stderr)
                return 1
            print(f"== {name}: passed in {time.time() - t0:.1f} s", flush=True)
        gpu, cpu = epoch_seconds(os.path.join(work, "gpu")), epoch_seconds(os.path.join(work, "cpu"))
        print(f"\nseconds per training epoch: {' '.join(gpu_workers(gpus))} against the same number of "
              f"CPU workers with {CPU_THREADS} threads each")
        print(f"{'stage':<10} {'GPU s':>8} {'CPU s':>8} {'GPU/CPU':>8}")
        for stage in gpu:
            print(f"{stage:<10} {gpu[stage]:>8.3f} {cpu[stage]:>8.3f} {gpu[stage] / cpu[stage]:>8.2f}")
        print("gpu_check: passed")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
