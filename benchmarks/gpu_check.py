"""The prepared GPU check: every CUDA path of the system, run once on a GPU machine (about 4 minutes;
results on an H200 in docs/gpu.md).

Parts, each in a process of its own with a time limit, so one that fails, hangs or
breaks the CUDA context does not stop the others; each prints one line, PASS or FAIL:

  epoch     a Baby-shape full-graph epoch (19,445 users, 7,050 items, 4,096-d image and
            384-d text features) on the GPU, float32, against the same epoch on this machine's
            CPU (all its cores): seconds, and the two epochs' losses compared; full-ranking
            evaluation of the validation split on both, seconds and metrics compared; the
            image projection's GEMM in float32 and bfloat16 (the precision issue's lever)
  sampled   one sampled-mode epoch (DGL blocks sampled on the CPU, moved to the GPU)
  knn       the Electronics-shape item kNN (63,001 items, 4,096-d) with ``device="cuda"``,
            its neighbour lists checked against exact float64 ones for sampled rows
  ray       ``margo-dist train`` through Ray Train on tiny data: two workers sharing the one
            GPU (``dist.gpus_per_worker=0.5 dist.backend=gloo``), or one worker per GPU on
            nccl where there are two or more
  contract  the exactness contract (``tests/dist/test_contract.py``, every test) with the
            tensors on the GPU (``MARGO_TEST_DEVICE=cuda``): an N = 2 step equals the local step

Everything is written under ``--out`` (default ``$OUT``, else ``./gpu-check``): ``check.log``
(these lines), ``<part>.log`` (each part's whole output) and ``results.json``.

    python benchmarks/gpu_check.py                   # exit 0: every part passed; 1: one failed; 2: no GPU
    python benchmarks/gpu_check.py --parts epoch,knn # some parts only
    python benchmarks/gpu_check.py --plan            # what it would run, without running it
    python benchmarks/gpu_check.py --device cpu --shape tiny   # the same code on the CPU at test size
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
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]

# Amazon Baby as MMRec ships it (benchmarks/bench_local.py); TINY is the size of its tests (tests/benchmarks)
SHAPES: dict[str, dict[str, int]] = {
    "baby": {"users": 19445, "items": 7050, "interactions": 160792, "image": 4096, "text": 384},
    "tiny": {"users": 150, "items": 80, "interactions": 1500, "image": 12, "text": 8},
}
# Amazon Electronics (MMRec's Elec): items and image-feature width of the kNN part
KNN_SHAPES = {"baby": (63001, 4096), "tiny": (300, 16)}
KNN_K, KNN_CHECKED_ROWS = 10, 256
RAY_DATA = {"users": 300, "items": 150, "interactions": 3000, "image": 12, "text": 8}
# seconds each part may take; the whole check also stops at --budget
LIMITS = {"epoch": 200, "sampled": 120, "knn": 120, "ray": 180, "contract": 200}
PARTS = list(LIMITS)
# GPU and CPU evaluations rank every user against every item: equal scores up to float32
# rounding, so a metric may move only where two items' scores are within rounding of each other
EVAL_TOLERANCE = 1e-3
# the first epoch's mean loss on GPU and CPU: the same batches and initial state, sums in
# another order (float32), so equal up to rounding accumulated over one epoch of Adam
LOSS_RTOL = 1e-3


@dataclass
class Context:
    out: Path
    device: str
    shape: str
    root: Path  # datasets made by the parts (reused between them)


def log_line(ctx: Context, result: dict[str, Any]) -> None:
    """A part's result as ``<part>.json``, which the orchestrator reads."""
    (ctx.out / f"{result['part']}.json").write_text(json.dumps(result, indent=1, default=str))


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def synthetic(ctx: Context, shape: dict[str, int]) -> str:
    """The synthetic dataset of ``shape`` under the check's root (made once, then reused)."""
    from margo_dist.data.synth import SynthSpec, ensure_synthetic

    url = str(ctx.root / "u{users}-i{items}-n{interactions}-v{image}-t{text}".format(**shape))
    spec = SynthSpec(n_users=shape["users"], n_items=shape["items"], n_interactions=shape["interactions"],
                     modality_dims={"image": shape["image"], "text": shape["text"]}, seed=0)
    return ensure_synthetic(spec, url, progress=False)


def trainer_for(name: str, url: str, device: str, threads: int, extra: tuple[str, ...] = ()) -> Any:
    """A local-mode trainer of the default config on ``url``; its run folder ``name`` is in memory
    (nothing written)."""
    from margo_dist.config import load_config
    from margo_dist.train.loop import Trainer, load_training_data

    cfg = load_config(str(REPO / "configs/default.yaml"), [
        f"data.path={url}", f"run.dir=memory://gpu-check-{name}",
        "train.progress=false", f"train.device={device}", f"train.threads={threads}", *extra])
    return Trainer(cfg, load_training_data(cfg), log=lambda _m: None)


def timed_epoch(trainer: Any, optimizer: Any, rng: Any, device: str) -> tuple[float, float]:
    """(seconds, mean loss) of one calibration-stage epoch (the costlier stage)."""
    from margo_dist.model.margo import CALIBRATE

    sync(device)
    t0 = time.perf_counter()
    losses = trainer.train_epoch(CALIBRATE, optimizer, rng, "gpu-check")
    sync(device)
    return time.perf_counter() - t0, float(losses["loss"])


def timed_eval(trainer: Any, device: str) -> tuple[float, dict[str, float]]:
    from margo_dist.data.dataset import VALID
    from margo_dist.model.margo import CALIBRATE

    sync(device)
    t0 = time.perf_counter()
    metrics = trainer.evaluate(CALIBRATE, VALID)
    sync(device)
    return time.perf_counter() - t0, metrics


# -- parts ------------------------------------------------------------------------------


def part_contract(ctx: Context) -> dict[str, Any]:
    """(a) the contract tests with MARGO_TEST_DEVICE set to the check's device."""
    import importlib.util

    command = [sys.executable, "-m", "pytest", "-q", "--tb=short", "-p", "no:cacheprovider",
               "tests/dist/test_contract.py"]
    if importlib.util.find_spec("xdist") is not None and (os.cpu_count() or 1) >= 8:
        command += ["-n", "4"]  # each test starts two worker processes: four tests at a time
    t0 = time.time()
    done = subprocess.run(command, cwd=REPO, env={**os.environ, "MARGO_TEST_DEVICE": ctx.device},
                          capture_output=True, text=True)
    print(done.stdout, done.stderr, sep="\n")
    tail = [line for line in done.stdout.splitlines() if " passed" in line or " failed" in line or "error" in line]
    summary = tail[-1].strip("= ") if tail else f"pytest exited {done.returncode} with no summary"
    return {"ok": done.returncode == 0, "line": f"tests/dist/test_contract.py on {ctx.device}: {summary} "
            f"({time.time() - t0:.0f} s)"}


def part_epoch(ctx: Context) -> dict[str, Any]:
    """(b) a full-graph epoch on the device against the CPU, (d) full-ranking evaluation on both."""
    import numpy as np
    import torch

    shape = SHAPES[ctx.shape]
    t0 = time.time()
    url = synthetic(ctx, shape)
    print(f"dataset {url}: {time.time() - t0:.1f} s", flush=True)
    cpu_threads = os.cpu_count() or 1
    gpu = trainer_for("epoch-device", url, ctx.device, cpu_threads)
    gpu_opt = gpu.new_optimizer()
    gpu_rng = np.random.default_rng(0)
    first_s, first_loss = timed_epoch(gpu, gpu_opt, gpu_rng, ctx.device)
    second_s, _ = timed_epoch(gpu, gpu_opt, gpu_rng, ctx.device)
    peak_gb = torch.cuda.max_memory_allocated() / 2**30 if ctx.device.startswith("cuda") else float("nan")
    timed_eval(gpu, ctx.device)  # warm-up (the score kernels' first launch)
    gpu_eval_s, gpu_metrics = timed_eval(gpu, ctx.device)
    print(f"{ctx.device}: epoch 1 {first_s:.2f} s (loss {first_loss:.6f}), epoch 2 {second_s:.2f} s, "
          f"eval {gpu_eval_s:.2f} s {gpu_metrics}, peak {peak_gb:.2f} GiB", flush=True)

    cpu = trainer_for("epoch-cpu", url, "cpu", cpu_threads)
    cpu_s, cpu_loss = timed_epoch(cpu, cpu.new_optimizer(), np.random.default_rng(0), "cpu")
    # the GPU model's parameters scored on the CPU: the same ranking up to rounding
    cpu.load_model_state({k: v.detach().cpu() for k, v in gpu.model_state().items()})
    cpu_eval_s, cpu_metrics = timed_eval(cpu, "cpu")
    print(f"cpu ({cpu_threads} threads): epoch {cpu_s:.2f} s (loss {cpu_loss:.6f}), eval {cpu_eval_s:.2f} s "
          f"{cpu_metrics}", flush=True)

    loss_rel = abs(first_loss - cpu_loss) / abs(cpu_loss)
    eval_diff = max(abs(gpu_metrics[k] - cpu_metrics[k]) for k in cpu_metrics)
    gemm = projection_gemm(ctx.device, shape["items"], shape["image"])
    lines = [
        {"name": "epoch", "ok": bool(loss_rel <= LOSS_RTOL),
         "line": f"full-graph epoch ({shape['users']} users, {shape['items']} items, float32): {ctx.device} "
                 f"{second_s:.2f} s (first {first_s:.2f} s), CPU {cpu_threads} threads {cpu_s:.2f} s, "
                 f"GPU/CPU {second_s / cpu_s:.3f}; first-epoch loss {first_loss:.6f} vs {cpu_loss:.6f} "
                 f"(rel {loss_rel:.1e}, limit {LOSS_RTOL:.0e}); peak GPU memory {peak_gb:.2f} GiB"},
        {"name": "eval", "ok": bool(eval_diff <= EVAL_TOLERANCE),
         "line": f"full-ranking evaluation (valid split, every item): {ctx.device} {gpu_eval_s:.2f} s, CPU "
                 f"{cpu_eval_s:.2f} s; recall@20 {gpu_metrics['recall@20']:.4f} vs {cpu_metrics['recall@20']:.4f}, "
                 f"largest metric difference {eval_diff:.1e} (limit {EVAL_TOLERANCE:.0e})"},
        {"name": "gemm", "ok": True, "line": gemm},
    ]
    return {"ok": all(x["ok"] for x in lines), "lines": lines,
            "figures": {"gpu_epoch_s": second_s, "gpu_first_epoch_s": first_s, "cpu_epoch_s": cpu_s,
                        "cpu_threads": cpu_threads, "gpu_eval_s": gpu_eval_s, "cpu_eval_s": cpu_eval_s,
                        "gpu_loss": first_loss, "cpu_loss": cpu_loss, "gpu_metrics": gpu_metrics,
                        "cpu_metrics": cpu_metrics, "peak_gpu_gib": peak_gb}}


def projection_gemm(device: str, n_items: int, width: int, dim: int = 256, repeat: int = 20) -> str:
    """Milliseconds of the image projection's first GEMM, forward and weight gradient
    ([n_items, width] x [width, dim]), in float32 and under bfloat16 autocast."""
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n_items, width, generator=gen).to(device)
    w = torch.randn(dim, width, generator=gen).to(device).requires_grad_()
    times = {}
    for name, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
        for k in range(repeat + 3):
            if k == 3:
                sync(device)
                t0 = time.perf_counter()
            with torch.autocast(device_type=torch.device(device).type, dtype=dtype or torch.float32,
                                enabled=dtype is not None):
                y = torch.nn.functional.linear(x, w)
            (gw,) = torch.autograd.grad(y.float().sum(), w)
        sync(device)
        times[name] = (time.perf_counter() - t0) / repeat * 1e3
        assert torch.isfinite(gw).all()
    return (f"projection GEMM [{n_items} x {width}] x [{width} x {dim}], forward + weight gradient: float32 "
            f"{times['float32']:.2f} ms, bfloat16 autocast {times['bfloat16']:.2f} ms "
            f"({times['float32'] / times['bfloat16']:.1f}x)")


def part_sampled(ctx: Context) -> dict[str, Any]:
    """(c) one sampled-mode epoch: blocks sampled on the CPU by DataLoader processes, moved to the device."""
    import math

    import numpy as np

    url = synthetic(ctx, SHAPES[ctx.shape])
    samplers = 4 if ctx.shape == "baby" else 0
    trainer = trainer_for("sampled", url, ctx.device, os.cpu_count() or 1, ("train.mode=sampled",
                                                                  f"sampler.num_workers={samplers}"))
    seconds, loss = timed_epoch(trainer, trainer.new_optimizer(), np.random.default_rng(0), ctx.device)
    ok = math.isfinite(loss) and str(trainer.features[0].device).startswith(ctx.device.split(":")[0])
    return {"ok": ok, "line": f"sampled-mode epoch ({len(trainer.triplets)} steps, {samplers} sampler processes, "
                              f"fan-outs {trainer.cfg.sampler.fanouts}): {ctx.device} {seconds:.2f} s, loss {loss:.4f}",
            "figures": {"sampled_epoch_s": seconds, "loss": loss}}


def ray_overrides(gpus: int) -> list[str]:
    """The Ray run's distributed settings for ``gpus`` visible GPUs."""
    if gpus >= 2:
        return [f"dist.workers={gpus}", "dist.use_gpu=true"]
    return ["dist.workers=2", "dist.use_gpu=true", "dist.gpus_per_worker=0.5", "dist.backend=gloo"]


def part_ray(ctx: Context) -> dict[str, Any]:
    """(e) ``margo-dist train`` through Ray Train with the workers on the GPU, on tiny data."""
    import torch
    import yaml

    url = synthetic(ctx, RAY_DATA)
    run_dir = ctx.root / "ray-run"
    gpus = torch.cuda.device_count() if ctx.device.startswith("cuda") else 0
    dist = ray_overrides(gpus) if gpus else ["dist.workers=2"]
    command = [sys.executable, "-m", "margo_dist.cli", "train", "--config", "configs/default.yaml",
               f"data.path={url}", f"run.dir={run_dir}", "train.max_epochs=2", "train.progress=false",
               "run.plots=false", "model.dim=16", "train.batch_size=512", *dist]
    print(" ".join(command), flush=True)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    t0 = time.time()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.time() - t0
    print(done.stdout, done.stderr, sep="\n")
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        return {"ok": False, "line": f"Ray Train run ({' '.join(dist)}) exited {done.returncode}: {last}"}
    summary = json.loads((run_dir / "summary.json").read_text())
    device = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["device"]
    on_device = str(device).startswith(ctx.device.split(":")[0])
    return {"ok": on_device, "line": f"Ray Train run ({' '.join(dist)}), workers on {device}: test recall@20 "
                                     f"{summary['test']['recall@20']:.4f}, weight AUC "
                                     f"{summary.get('weight_auc', float('nan')):.3f}, {seconds:.0f} s end to end",
            "figures": {"seconds": seconds, "summary": summary}}


def part_knn(ctx: Context) -> dict[str, Any]:
    """(f) the item kNN on the device at Electronics shape, checked against exact float64 neighbours."""
    import numpy as np
    import torch

    from margo_dist.graph.build import item_knn

    n, width = KNN_SHAPES[ctx.shape]
    feats = np.random.default_rng(0).standard_normal((n, width), dtype=np.float32)
    item_knn(feats[:2048], KNN_K, device=ctx.device)  # warm-up: kernels and the allocator
    sync(ctx.device)
    t0 = time.perf_counter()
    idx, sim = item_knn(feats, KNN_K, device=ctx.device)
    sync(ctx.device)
    seconds = time.perf_counter() - t0
    rows = np.random.default_rng(1).choice(n, size=min(KNN_CHECKED_ROWS, n), replace=False)
    x = torch.from_numpy(feats).double()
    unit = x / x.norm(dim=1, keepdim=True)
    exact = unit[torch.from_numpy(rows)] @ unit.T
    exact[torch.arange(rows.size), torch.from_numpy(rows)] = float("-inf")
    top = torch.topk(exact, KNN_K, dim=1)
    found = sum(len(set(idx[r].tolist()) & set(top.indices[k].tolist())) for k, r in enumerate(rows))
    recall = found / (rows.size * KNN_K)
    sim_err = float(np.abs(sim[rows] - top.values.numpy().astype(np.float32)).max())
    ok = recall >= 0.999 and sim_err <= 1e-4
    return {"ok": ok, "line": f"item kNN ({n} items, {width}-d, k={KNN_K}) on {ctx.device}: {seconds:.2f} s; "
                              f"{rows.size} rows against exact float64: neighbour recall {recall:.4f}, largest "
                              f"similarity error {sim_err:.1e}",
            "figures": {"seconds": seconds, "recall": recall, "sim_err": sim_err}}


RUNNERS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "contract": part_contract, "epoch": part_epoch, "sampled": part_sampled, "ray": part_ray, "knn": part_knn}


def run_part(name: str, ctx: Context) -> int:
    """The body of one part's process: its result as ``<name>.json``, any exception as a FAIL."""
    try:
        result = RUNNERS[name](ctx)
    except BaseException as exc:  # noqa: BLE001 - reported as the part's failure, with its traceback
        traceback.print_exc()
        result = {"ok": False, "line": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    log_line(ctx, {"part": name, **result})
    return 0 if result["ok"] else 1


# -- orchestration ----------------------------------------------------------------------


def result_lines(name: str, result: dict[str, Any]) -> list[str]:
    """The PASS/FAIL lines of one part's result."""
    if "lines" in result:
        return [f"{'PASS' if x['ok'] else 'FAIL'} {name}/{x['name']}: {x['line']}" for x in result["lines"]]
    return [f"{'PASS' if result['ok'] else 'FAIL'} {name}: {result['line']}"]


def part_command(name: str, ctx: Context) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--part", name, "--out", str(ctx.out),
            "--device", ctx.device, "--shape", ctx.shape, "--root", str(ctx.root)]


def orchestrate(parts: list[str], ctx: Context, budget: float, say: Callable[[str], None]) -> dict[str, Any]:
    """Run each part in its own process within its limit and the budget; collect the results."""
    deadline = time.time() + budget
    results: dict[str, Any] = {}
    for name in parts:
        budget_left = deadline - time.time()
        left = min(LIMITS[name], budget_left)
        if budget_left < 5:
            results[name] = {"ok": False, "line": f"not run: the check's {budget:.0f} s budget was spent"}
            say(result_lines(name, results[name])[0])
            continue
        t0 = time.time()
        stale = ctx.out / f"{name}.json"
        stale.unlink(missing_ok=True)
        with open(ctx.out / f"{name}.log", "w") as logfile:
            proc = subprocess.Popen(part_command(name, ctx), cwd=REPO, stdout=logfile, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                code = proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)  # the part and every process it started (pytest workers, Ray)
                proc.wait()
                code = None
        if stale.exists():
            results[name] = json.loads(stale.read_text())
            stale.unlink()
        elif code is None:
            results[name] = {"ok": False, "line": f"ran past its {left:.0f} s limit (see {name}.log)"}
        else:
            results[name] = {"ok": False, "line": f"exited {code} without a result (see {name}.log)"}
        results[name]["seconds"] = time.time() - t0
        for line in result_lines(name, results[name]):
            say(line)
    return results


def device_description(device: str) -> str:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "none"
    return (f"Python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
            f"GPUs: {gpus}; CPU: {cpu}, {os.cpu_count()} cores; check device {device}")


def checked(parts: list[str], ctx: Context, budget: float) -> int:
    """Run ``parts``, writing ``check.log`` and ``results.json``; 0 when every line passed."""
    out = ctx.out
    ctx.root.mkdir(parents=True, exist_ok=True)
    with open(out / "check.log", "w") as check_log:
        def say(line: str) -> None:
            print(line, flush=True)
            check_log.write(line + "\n")
            check_log.flush()

        say(f"gpu_check: {device_description(ctx.device)}")
        t0 = time.time()
        results = orchestrate(parts, ctx, budget, say)
        lines = [line for name, result in results.items() for line in result_lines(name, result)]
        passed = sum(1 for line in lines if line.startswith("PASS"))
        say(f"{passed} passed, {len(lines) - passed} failed ({time.time() - t0:.0f} s)")
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return 0 if passed == len(lines) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu-check", help="where the logs go")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu to try the check's own code")
    parser.add_argument("--shape", default="baby", choices=sorted(SHAPES), help="baby (default) or tiny")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for all parts together")
    parser.add_argument("--plan", action="store_true", help="print the parts' commands and exit")
    parser.add_argument("--root", default="", help="where the parts make their datasets (default: a temp folder)")
    parser.add_argument("--part", default="", help=argparse.SUPPRESS)  # one part, in its own process
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {unknown}; the parts are {PARTS}")
    import torch

    out = Path(args.out)
    ctx = Context(out, args.device, args.shape, Path(args.root or os.path.join(tempfile.gettempdir(), "margo-gpu-check-*")))
    if args.part:
        return run_part(args.part, ctx)
    if args.plan:
        for name in parts:
            print(f"{name} (limit {LIMITS[name]} s): {' '.join(part_command(name, ctx))}")
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU is visible here (torch.cuda.is_available() is False); run it on a GPU "
              "machine, or pass --device cpu --shape tiny to try the check's own code", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    if not args.root:  # the datasets it makes (about 300 MB at Baby shape) go with the check
        ctx.root = Path(tempfile.mkdtemp(prefix="margo-gpu-check-"))
    try:
        return checked(parts, ctx, args.budget)
    finally:
        if not args.root:
            shutil.rmtree(ctx.root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
