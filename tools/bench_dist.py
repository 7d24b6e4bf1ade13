"""Strong scaling of the full-graph step: N = 1 against N = 2 workers, the same global batch.

Each worker is a gloo process on loopback with one torch thread (``--threads``), running
the real trainer step (``Trainer.train_step``: owner-computed projections, gathered rows,
summed dense gradients) on MARGO's calibration stage. Per N it prints seconds per epoch
(the mean of ``--steps`` timed steps after one warm-up, times the steps of an epoch),
the projection FLOPs per worker and step, the bytes each worker sends per step, and the
bytes of every table a worker holds (raw features, user tables, θ, optimiser state);
then the epoch-time ratio N = 2 / N = 1. This machine's speed drifts between minutes
(a shared host), so ``--repeat R`` measures the world sizes in turn R times and prints
each round's ratio and their median: the ratio of two measurements taken seconds apart.

    python tools/bench_dist.py                    # Baby shape (19,445 users, 7,050 items)
    python tools/bench_dist.py --tiny --steps 2   # the smoke test's size

Owners come from a METIS shard set of the dataset (made once, cached), as
``dist.workers=N`` uses.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from margo_dist.data.synth import margo_home

BABY = {"users": 19445, "items": 7050, "interactions": 160792, "image": 4096, "text": 384}
TINY = {"users": 150, "items": 80, "interactions": 1500, "image": 12, "text": 8}


def dataset(shape: dict[str, int], root: str) -> str:
    from margo_dist.data.synth import SynthSpec, ensure_synthetic

    url = os.path.join(root, "u{users}-i{items}-n{interactions}-v{image}-t{text}".format(**shape))
    spec = SynthSpec(n_users=shape["users"], n_items=shape["items"], n_interactions=shape["interactions"],
                     modality_dims={"image": shape["image"], "text": shape["text"]}, seed=0)
    return ensure_synthetic(spec, url)


def overrides(url: str, extra: list[str]) -> list[str]:
    return [f"data.path={url}", "run.dir=memory://bench-dist", "train.progress=false", *extra]


def measure(rank: int, world: int, url: str, shards: str, steps: int, extra: list[str]) -> dict:
    """One worker: ``steps`` timed training steps and what it holds."""
    import torch

    from margo_dist.config import load_config
    from margo_dist.dist.comm import LocalComm, TorchComm
    from margo_dist.dist.sharding import Placement
    from margo_dist.graph.partition import load_owners
    from margo_dist.model.variants import CALIBRATE
    from margo_dist.train.loop import Trainer, load_training_data

    cfg = load_config("configs/default.yaml", overrides(url, extra))
    comm = TorchComm() if world > 1 else LocalComm()
    placement = None
    if world > 1:
        owners = load_owners(shards)
        placement = Placement(comm, owners["user"], owners["item"])
    trainer = Trainer(cfg, load_training_data(cfg, build_graphs=False), log=lambda _m: None, comm=comm,
                      placement=placement)
    optimizer = trainer.new_optimizer()
    rng = np.random.default_rng(0)
    batches = (b for _ in range(steps + 1) for b in trainer.batches(rng))  # epochs after one another
    trainer.train_step(CALIBRATE, next(batches), optimizer)  # warm-up (and optimiser state)
    sent0 = getattr(comm, "bytes_sent", 0)
    times = []
    for _ in range(steps):
        batch = next(batches)
        comm.barrier()
        t0 = time.perf_counter()
        trainer.train_step(CALIBRATE, batch, optimizer)
        times.append(time.perf_counter() - t0)
    sent = (getattr(comm, "bytes_sent", 0) - sent0) / steps
    model = trainer.model
    n_own_items = trainer.features[0].shape[0]
    hidden = cfg.model.hidden_mult * cfg.model.dim
    # forward 2*F*h + 2*h*d per item and modality; backward twice that (weights and inputs of layer 2,
    # weights of layer 1: the raw features need no gradient)
    flops = sum(n_own_items * (2 * f.shape[1] * hidden + 2 * hidden * cfg.model.dim) * 3 for f in trainer.features)
    groups = model.parameter_groups()
    state = optimizer.state

    def nbytes(params: list[torch.nn.Parameter]) -> int:
        return sum(p.numel() * p.element_size() for p in params)

    adam = sum(t.numel() * t.element_size() for s in state.values() for t in s.values() if torch.is_tensor(t))
    users = [t.weight for t in model.encoder.preferences]
    print(f"rank {rank} of {world}: steps " + " ".join(f"{t:.3f}" for t in times), flush=True)
    return {"rank": rank, "step_s": float(np.mean(times)), "steps_per_epoch": len(trainer.triplets),
            "flops": flops, "sent": sent, "features": sum(f.numel() * f.element_size() for f in trainer.features),
            "user_tables": nbytes(users), "theta": nbytes([model.theta.weight]), "dense": nbytes(groups["dense"]),
            "adam": adam}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the smoke test's size instead of the Baby shape")
    parser.add_argument("--workers", default="1,2", help="world sizes to compare (the first is the baseline)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per world size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all world sizes in turn (median ratio)")
    parser.add_argument("--set", nargs="*", default=[], help="extra key=value config overrides")
    parser.add_argument("--root", default=os.path.join(margo_home(), "bench"))
    args = parser.parse_args(argv)
    from margo_dist.config import load_config
    from margo_dist.dist.launch import ensure_owner_shards
    from margo_dist.dist.processes import run_workers
    from margo_dist.train.loop import load_training_data

    url = dataset(TINY if args.tiny else BABY, args.root)
    extra = [f"train.threads={args.threads}", *args.set]
    cfg = load_config("configs/default.yaml", overrides(url, extra))
    load_training_data(cfg)  # graph artefacts, once
    worlds = [int(w) for w in args.workers.split(",")]
    shards = {w: ensure_owner_shards(cfg, w, progress=False) if w > 1 else "" for w in worlds}
    rounds = []
    for _ in range(args.repeat):
        rounds.append([(w, run_workers(measure, w, url, shards[w], args.steps, extra, timeout=3600.0,
                                       threads=args.threads)) for w in worlds])
    for k, rows in enumerate(rounds):
        print(f"\nround {k + 1}/{args.repeat}")
        _table(url, args, rows)
    if args.repeat > 1:
        for world in worlds[1:]:
            ratios = [_epoch(rows[worlds.index(world)][1]) / _epoch(rows[0][1]) for rows in rounds]
            print(f"epoch-time ratio N={world} / N={worlds[0]} per round: "
                  f"{' '.join(f'{r:.2f}' for r in ratios)}; median {float(np.median(ratios)):.2f}")


def _epoch(results: list[dict]) -> float:
    """An epoch: the slowest worker's mean step times the steps of an epoch."""
    return max(r["step_s"] for r in results) * results[0]["steps_per_epoch"]


def _table(url: str, args: argparse.Namespace, rows: list[tuple[int, list[dict]]]) -> None:
    mb = 1 / 2**20
    head = (f"{'N':>2} {'epoch s':>8} {'proj GFLOP/step':>16} {'MB sent/step':>13} {'features MB':>12} "
            f"{'user tables MB':>15} {'theta MB':>9} {'Adam MB':>8} {'dense MB':>9}")
    print(f"\ndataset {url}  ({args.threads} thread(s) per worker, {args.steps} timed steps)")
    print(head)
    print("-" * len(head))
    epochs = {}
    for world, results in rows:
        epochs[world] = _epoch(results)
        for r in results:
            print(f"{world:>2} {epochs[world]:>8.2f} {r['flops'] / 1e9:>16.2f} {r['sent'] * mb:>13.2f} "
                  f"{r['features'] * mb:>12.2f} {r['user_tables'] * mb:>15.2f} {r['theta'] * mb:>9.3f} "
                  f"{r['adam'] * mb:>8.2f} {r['dense'] * mb:>9.2f}")
    base = rows[0][0]
    for world, _ in rows[1:]:
        print(f"epoch-time ratio N={world} / N={base}: {epochs[world] / epochs[base]:.2f}")


if __name__ == "__main__":
    main()
