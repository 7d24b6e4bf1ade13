"""Amazon-Elec scale on this machine: data, graphs, shards, one sampled epoch, one evaluation.

Each step runs in its own process and prints its seconds and peak RSS:
  synth      generate (or reuse) the dataset: 192,403 users, 63,001 items,
             1,689,188 interactions, 4096-d image and 384-d text features
  read       read and validate it
  graphs     item kNN per modality + user co-occurrence (blocked, bounded memory)
  partition  DGL partition_graph of the training graph with its homogeneous relations
  epoch      one sampled training epoch of MARGO's calibration stage
  evaluate   one full-ranking evaluation (every node's embedding computed once)

    python benchmarks/bench_scale.py                       # Elec scale
    python benchmarks/bench_scale.py --scale 0.05          # a 5% slice of every count, for a smoke run
    python benchmarks/bench_scale.py --dtype float16       # features stored as float16

The epoch uses ``--batch-size`` (default 16384, 8x the paper's 2048): at 2048 an epoch is
660 steps and each step projects most of the 63k items' 4096-d image features, which
on 2 cores is about an hour; the larger batch keeps the epoch's work per item the same
order while the fixed per-step cost is paid 8x less often. Say which one you report.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import time
from typing import Any, Callable

from margo_dist.data.synth import margo_home

ELEC = {"users": 192403, "items": 63001, "interactions": 1689188, "image": 4096, "text": 384}


def _child(fn: Callable[..., dict[str, Any]], args: tuple, queue: "mp.Queue") -> None:
    t0 = time.time()
    try:
        extra = fn(*args) or {}
        queue.put({"ok": True, "seconds": time.time() - t0,
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra})
    except BaseException as exc:  # reported in the table, the run goes on
        queue.put({"ok": False, "seconds": time.time() - t0, "error": f"{type(exc).__name__}: {exc}"})


def step(name: str, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    result["step"] = name
    status = "" if result["ok"] else f"  FAILED {result['error']}"
    print(f"{name:<10} {result['seconds']:>9.1f} s {result.get('peak_rss_mb', float('nan')):>9.0f} MB{status}",
          flush=True)
    return result


def do_synth(url: str, shape: dict[str, int]) -> dict[str, Any]:
    from margo_dist.data import io as mio
    from margo_dist.data.synth import META_FILE, SynthSpec, ensure_synthetic

    reused = mio.exists(mio.join(url, META_FILE))
    ensure_synthetic(SynthSpec(n_users=shape["users"], n_items=shape["items"], n_interactions=shape["interactions"],
                               modality_dims={"image": shape["image"], "text": shape["text"]}, seed=0), url)
    return {"note": "reused"} if reused else {}


def _cfg(url: str, dtype: str, extra: list[str]) -> Any:
    from margo_dist.config import load_config

    return load_config("configs/default.yaml", [f"data.path={url}", f"data.feature_dtype={dtype}",
                                                "train.progress=false", *extra])


def do_read(url: str, dtype: str) -> dict[str, Any]:
    from margo_dist.data.formats import read_dataset_cfg

    ds = read_dataset_cfg(_cfg(url, dtype, []).data)
    return {"note": f"{ds.n_users} users, {ds.n_items} items, {ds.user.size} interactions"}


def do_graphs(url: str, dtype: str) -> dict[str, Any]:
    from margo_dist.data.formats import read_dataset_cfg
    from margo_dist.graph.build import ensure_graphs

    cfg = _cfg(url, dtype, [])
    ds = read_dataset_cfg(cfg.data)
    art = ensure_graphs(ds, url, cfg.graph, cfg.data.modalities, build=True)
    return {"note": f"{art.train_user.size} train edges"}


def do_partition(url: str, dtype: str, parts: int) -> dict[str, Any]:
    from margo_dist.data.formats import read_dataset_cfg
    from margo_dist.graph.build import ensure_graphs, shards_dir
    from margo_dist.graph.partition import partition_graphs

    cfg = _cfg(url, dtype, [])
    ds = read_dataset_cfg(cfg.data)
    art = ensure_graphs(ds, url, cfg.graph, cfg.data.modalities, build=False)
    out = shards_dir(url, cfg.graph, art.key, "metis", parts)
    partition_graphs(art, cfg.data.modalities, out, parts, "metis")
    return {"note": f"{parts} parts -> {out}"}


def do_epoch(url: str, dtype: str, batch: int, fanouts: str, workers: int) -> dict[str, Any]:
    import numpy as np
    import torch

    from margo_dist.model.margo import CALIBRATE
    from margo_dist.train.loop import Trainer, load_training_data

    cfg = _cfg(url, dtype, ["train.mode=sampled", f"train.batch_size={batch}", f"sampler.fanouts={fanouts}",
                            f"sampler.num_workers={workers}", "run.dir=memory://bench-scale"])
    trainer = Trainer(cfg, load_training_data(cfg, build_graphs=False), log=lambda _m: None)
    optimizer = trainer.new_optimizer()
    t0 = time.time()
    losses = trainer.train_epoch(CALIBRATE, optimizer, np.random.default_rng(0), "scale")
    seconds = time.time() - t0
    n = int((trainer.data.ds.label == 0).sum())
    torch.save(trainer.model.state_dict(), os.path.join(url, ".margo_cache", "bench_scale_model.pt"))
    return {"note": f"{len(trainer.triplets)} steps of {batch}, {n / seconds:.0f} triplets/s, "
                    f"loss {losses['loss']:.4f}"}


def do_evaluate(url: str, dtype: str) -> dict[str, Any]:
    import torch

    from margo_dist.data.dataset import VALID
    from margo_dist.model.margo import CALIBRATE
    from margo_dist.train.loop import Trainer, load_training_data

    cfg = _cfg(url, dtype, ["run.dir=memory://bench-scale-eval"])
    trainer = Trainer(cfg, load_training_data(cfg, build_graphs=False), log=lambda _m: None)
    path = os.path.join(url, ".margo_cache", "bench_scale_model.pt")
    if os.path.exists(path):
        trainer.model.load_state_dict(torch.load(path, weights_only=True))
    metrics = trainer.evaluate(CALIBRATE, VALID)
    return {"note": f"valid recall@20 {metrics['recall@20']:.4f} after one epoch"}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the Elec counts (feature dims kept)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--batch-size", type=int, default=16384)
    p.add_argument("--fanouts", default="{ui: [5, 5], iu: [5, 5], ii: [5], uu: [10]}")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--parts", type=int, default=2)
    p.add_argument("--steps", default="synth,read,graphs,partition,epoch,evaluate")
    p.add_argument("--root", default=os.path.join(margo_home(), "bench"))
    args = p.parse_args(argv)
    shape = dict(ELEC)
    for key in ("users", "items", "interactions"):
        shape[key] = max(10, int(round(shape[key] * args.scale)))
    url = os.path.join(args.root, "elec-u{users}-i{items}-n{interactions}".format(**shape))
    print(f"dataset {url}  features {args.dtype}  batch {args.batch_size}  fan-outs {args.fanouts}")
    print(f"{'step':<10} {'seconds':>11} {'peak RSS':>12}")
    todo = args.steps.split(",")
    plan = [("synth", do_synth, (url, shape)), ("read", do_read, (url, args.dtype)),
            ("graphs", do_graphs, (url, args.dtype)), ("partition", do_partition, (url, args.dtype, args.parts)),
            ("epoch", do_epoch, (url, args.dtype, args.batch_size, args.fanouts, args.workers)),
            ("evaluate", do_evaluate, (url, args.dtype))]
    results = [step(name, fn, *fargs) for name, fn, fargs in plan if name in todo]
    for r in results:
        if r.get("note"):
            print(f"  {r['step']}: {r['note']}")


if __name__ == "__main__":
    main()
