"""Strong scaling of a training step: N = 1 against N workers, the same global batch.

Each worker is a gloo process on loopback with one torch thread (``--threads``), running
the real trainer step (``Trainer.train_step``) on MARGO's calibration stage, and reading
what a ``dist.workers=N`` worker reads: the interactions, the graph, and its own rows of
the raw features from its shard (N = 1 reads the dataset, as local mode does).

- ``--mode full`` (default): owner-computed projections of every item, each worker's
  block of the columns of every row (it propagates those columns), summed dense gradients.
- ``--mode sampled``: DGL blocks for the worker's share of each step (sampled ahead in
  ``sampler.num_workers`` DataLoader processes, as training does); the rows the blocks
  reach come from their owners (users' rows fetched, items projected by their owners
  once per step, deduplicated over the requesters).

Per size (``--sizes``: tiny, baby, elec) and N it prints, per worker: seconds per epoch
(the mean of ``--steps`` timed steps after one warm-up, times the steps of an epoch; or
one whole epoch with ``--epoch``), the items it projects per step and their FLOPs, the
rows it asks of other owners and the bytes it sends per step, the bytes of every table
it holds (raw features, user tables, θ, Adam state), the graph structure it holds, the
fraction of the graph it holds (sampled mode: its shard's receptive field, the nodes whose
edges it holds and its training edges, each a fraction of the whole graph), and its peak
RSS; then per N the epoch-time ratio against the first N and the feature + table bytes
of the largest worker against the first N's (the target at N = 2 is 0.55 or less).
``--plot FILE`` draws per-worker memory against N. This machine's speed drifts between
minutes (a shared host), so ``--repeat R`` measures the world sizes in turn R times and
prints each round's ratio and their median.

    python benchmarks/bench_dist.py                                  # full mode, Baby shape
    python benchmarks/bench_dist.py --mode sampled --sizes baby,elec --workers 1,2,4
    python benchmarks/bench_dist.py --tiny --steps 2                 # the smoke test's size

Owners come from a METIS shard set of the dataset (made once, cached), as
``dist.workers=N`` uses.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np

from margo_dist.data.synth import margo_home

SHAPES = {
    "tiny": {"users": 150, "items": 80, "interactions": 1500, "image": 12, "text": 8},
    "baby": {"users": 19445, "items": 7050, "interactions": 160792, "image": 4096, "text": 384},
    "elec": {"users": 192403, "items": 63001, "interactions": 1689188, "image": 4096, "text": 384},
}
MB = 1 / 2**20


def dataset(shape: dict[str, int], root: str) -> str:
    from margo_dist.data.synth import SynthSpec, ensure_synthetic

    url = os.path.join(root, "u{users}-i{items}-n{interactions}-v{image}-t{text}".format(**shape))
    spec = SynthSpec(n_users=shape["users"], n_items=shape["items"], n_interactions=shape["interactions"],
                     modality_dims={"image": shape["image"], "text": shape["text"]}, seed=0)
    return ensure_synthetic(spec, url)


def overrides(url: str, mode: str, extra: list[str]) -> list[str]:
    return [f"data.path={url}", "run.dir=memory://bench-dist", "train.progress=false", f"train.mode={mode}", *extra]


def measure(rank: int, world: int, url: str, shards: str, mode: str, steps: int, epoch: bool,
            extra: list[str]) -> dict:
    """One worker: ``steps`` timed training steps (or one whole epoch) and what it holds."""
    import torch

    from margo_dist.config import load_config
    from margo_dist.dist.comm import Counting, LocalComm, TorchComm
    from margo_dist.dist.sharding import USER, Placement
    from margo_dist.model.placement import LocalPlacement
    from margo_dist.graph.partition import load_owners
    from margo_dist.variants import CALIBRATE
    from margo_dist.train.loop import Trainer, load_training_data

    cfg = load_config("configs/default.yaml", overrides(url, mode, extra))
    counting = Counting() if world > 1 else None  # the bytes each worker sends
    comm = TorchComm(counting) if counting is not None else LocalComm()
    if world > 1:
        owners = load_owners(shards)
        placement = Placement(comm, owners["user"], owners["item"])
        data = load_training_data(cfg, shard=(shards, rank))  # what a Ray Train worker reads
    else:
        data = load_training_data(cfg, build_graphs=False)
        placement = LocalPlacement(data.ds.n_users, data.ds.n_items)
    trainer = Trainer(cfg, data, log=lambda _m: None, comm=comm, placement=placement)
    optimizer = trainer.new_optimizer()
    rng = np.random.default_rng(0)
    per_epoch = len(trainer.triplets)
    n_steps = per_epoch if epoch else steps
    batches = (b for _ in range(n_steps + 1) for b in trainer.batches(rng))  # epochs after one another
    trainer.train_step(CALIBRATE, next(batches), optimizer)  # warm-up (and optimiser state)
    sent0, asked0, computed0 = counting.bytes_sent if counting else 0, placement.rows_asked, placement.rows_computed
    times, inputs = [], []
    start = time.perf_counter()
    for _ in range(n_steps):
        if not epoch:
            comm.barrier()
        t0 = time.perf_counter()
        batch = next(batches)  # making the batch (sampling, in sampled mode) is part of the step
        inputs.append(batch.graph.input_items.numel() if batch.graph.input_items is not None else 0)
        trainer.train_step(CALIBRATE, batch, optimizer)
        times.append(time.perf_counter() - t0)
    comm.barrier()
    whole = time.perf_counter() - start
    sent = ((counting.bytes_sent if counting else 0) - sent0) / n_steps
    model = trainer.model
    n_own_items = trainer.features[0].shape[0]
    # full mode projects every owned item each step; sampled mode the items asked of this owner,
    # or locally the blocks' input items (every item once they are more than half of them, as
    # DragonEncoder.item_inputs does)
    projected = float(n_own_items)
    if mode == "sampled" and world > 1:
        projected = (placement.rows_computed - computed0) / n_steps
    elif mode == "sampled":
        projected = float(np.mean([n_own_items if 2 * k > n_own_items else k for k in inputs]))
    hidden = cfg.model.hidden_mult * cfg.model.dim
    # forward 2*F*h + 2*h*d per item and modality; backward twice that (weights and inputs of layer 2,
    # weights of layer 1: the raw features need no gradient)
    flops = sum(projected * (2 * f.shape[1] * hidden + 2 * hidden * cfg.model.dim) * 3 for f in trainer.features)
    adam = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
               if torch.is_tensor(t))

    def nbytes(params: list[torch.nn.Parameter]) -> int:
        return sum(p.numel() * p.element_size() for p in params)

    g = data.graph
    structure = sum(t.numel() * t.element_size() for e in (g.bipartite, g.item_item, g.user_user)
                    for t in (e.src, e.dst, e.w))
    print(f"rank {rank} of {world}: {'epoch' if epoch else 'steps'} " +
          (f"{whole:.1f}s" if epoch else " ".join(f"{t:.3f}" for t in times)), flush=True)
    return {"rank": rank, "step_s": float(np.mean(times)), "steps_per_epoch": per_epoch,
            "epoch_s": whole if epoch else None, "projected": projected, "flops": flops,
            "asked": (placement.rows_asked - asked0) / n_steps, "sent": sent,
            "features": sum(f.numel() * f.element_size() for f in trainer.features),
            "user_tables": nbytes([t.weight for t in model.encoder.preferences]),
            "theta": nbytes([model.theta.weight]), "adam": adam,
            "structure": structure, "own_items": n_own_items, "own_users": int(placement.owned(USER).numel()),
            "items": int(data.ds.n_items), "rss": peak_rss()}


def peak_rss() -> int:
    """This process's peak resident bytes (VmHWM). Not ``getrusage``'s ru_maxrss: that survives
    exec, so a worker spawned by a parent holding the dataset would start at the parent's peak."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def held_fractions(shards: str, world: int, mode: str) -> list[tuple[float, float]]:
    """Per worker: the fraction of the graph's nodes whose edges it holds and of the training
    edges it holds. Sampled workers hold their shard's receptive field (``graph/field.py``,
    sizes from the shard manifest); full-mode workers and N = 1 hold the whole graph."""
    if world == 1 or mode == "full":
        return [(1.0, 1.0)] * world
    from margo_dist.graph.partition import read_shard_manifest

    man = read_shard_manifest(shards)
    n = int(man["n_users"]) + int(man["n_items"])
    return [((p["users"] + p["items"]) / n, float(p["edge_fraction"])) for p in man["field"]["parts"]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default="full", choices=["full", "sampled"])
    parser.add_argument("--sizes", default="baby", help="comma-separated shapes: tiny, baby, elec")
    parser.add_argument("--tiny", action="store_true", help="the smoke test's size (--sizes tiny)")
    parser.add_argument("--workers", default="1,2", help="world sizes to compare (the first is the baseline)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per world size")
    parser.add_argument("--epoch", action="store_true", help="time one whole epoch instead of --steps steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all world sizes in turn (median ratio)")
    parser.add_argument("--set", nargs="*", default=[], help="extra key=value config overrides")
    parser.add_argument("--plot", default="", help="PNG of per-worker memory against N")
    parser.add_argument("--root", default=os.path.join(margo_home(), "bench"))
    args = parser.parse_args(argv)
    from margo_dist.config import load_config
    from margo_dist.dist.launch import ensure_owner_shards
    from margo_dist.dist.processes import run_workers
    from margo_dist.train.loop import load_training_data

    sizes = ["tiny"] if args.tiny else args.sizes.split(",")
    unknown = [s for s in sizes if s not in SHAPES]
    if unknown:
        parser.error(f"--sizes: unknown shape(s) {unknown}; known: {sorted(SHAPES)}")
    worlds = [int(w) for w in args.workers.split(",")]
    extra = [f"train.threads={args.threads}", *args.set]
    plotted = {}
    for size in sizes:
        url = dataset(SHAPES[size], args.root)
        cfg = load_config("configs/default.yaml", overrides(url, args.mode, extra))
        load_training_data(cfg)  # graph artefacts, built once
        shards = {w: ensure_owner_shards(cfg, w, progress=False) if w > 1 else "" for w in worlds}
        fractions = {w: held_fractions(shards[w], w, args.mode) for w in worlds}
        rounds = []
        for _ in range(args.repeat):
            rounds.append([(w, run_workers(measure, w, url, shards[w], args.mode, args.steps, args.epoch, extra,
                                           timeout=4 * 3600.0, threads=args.threads)) for w in worlds])
        for k, rows in enumerate(rounds):
            print(f"\n{size}, {args.mode} mode, round {k + 1}/{args.repeat}")
            _table(url, args, rows, fractions)
        if args.repeat > 1:
            for world in worlds[1:]:
                ratios = [_epoch(rows[worlds.index(world)][1]) / _epoch(rows[0][1]) for rows in rounds]
                print(f"epoch-time ratio N={world} / N={worlds[0]} per round: "
                      f"{' '.join(f'{r:.2f}' for r in ratios)}; median {float(np.median(ratios)):.2f}")
        plotted[size] = rounds[-1]
    if args.plot:
        _plot(args.plot, args.mode, plotted)


def _epoch(results: list[dict]) -> float:
    """An epoch: measured whole, or the slowest worker's mean step times the steps of an epoch."""
    if results[0]["epoch_s"] is not None:
        return max(r["epoch_s"] for r in results)
    return max(r["step_s"] for r in results) * results[0]["steps_per_epoch"]


def _held(r: dict) -> int:
    """Raw-feature and table bytes of a worker (the rows the owner rule splits)."""
    return r["features"] + r["user_tables"] + r["theta"]


def _table(url: str, args: argparse.Namespace, rows: list[tuple[int, list[dict]]],
           halos: dict[int, list[tuple[float, float]]]) -> None:
    timed = "one whole epoch" if args.epoch else f"{args.steps} timed steps"
    head = (f"{'N':>2} {'rank':>4} {'epoch s':>8} {'items proj/step':>15} {'proj GFLOP/step':>15} "
            f"{'rows asked/step':>15} {'MB sent/step':>12} {'features MB':>11} {'user tables MB':>14} "
            f"{'theta MB':>8} {'Adam MB':>8} {'graph MB':>8} {'held nodes':>10} {'held edges':>10} "
            f"{'peak RSS MB':>11}")
    print(f"dataset {url}  ({args.threads} thread(s) per worker, {timed})")
    print(head)
    print("-" * len(head))
    epochs, held = {}, {}
    for world, results in rows:
        epochs[world] = _epoch(results)
        held[world] = max(_held(r) for r in results)
        for r in results:
            nodes, edges = halos[world][r["rank"]]
            print(f"{world:>2} {r['rank']:>4} {epochs[world]:>8.2f} {r['projected']:>15.0f} {r['flops'] / 1e9:>15.2f} "
                  f"{r['asked']:>15.0f} {r['sent'] * MB:>12.2f} {r['features'] * MB:>11.2f} "
                  f"{r['user_tables'] * MB:>14.2f} {r['theta'] * MB:>8.3f} {r['adam'] * MB:>8.2f} "
                  f"{r['structure'] * MB:>8.1f} {nodes:>10.3f} {edges:>10.3f} {r['rss'] * MB:>11.0f}")
    base = rows[0][0]
    for world, _ in rows[1:]:
        print(f"epoch-time ratio N={world} / N={base}: {epochs[world] / epochs[base]:.2f}; "
              f"feature + table bytes of the largest worker / N={base}: {held[world] / held[base]:.3f} "
              f"(1/N = {base / world:.3f})")


def _plot(path: str, mode: str, sizes: dict[str, list[tuple[int, list[dict]]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 3.6), squeeze=False)
    for ax, (size, rows) in zip(axes[0], sizes.items()):
        worlds = [w for w, _ in rows]
        for label, key in (("features + tables (largest worker)", _held), ("peak RSS (largest worker)",
                                                                            lambda r: r["rss"])):
            ax.plot(worlds, [max(key(r) for r in results) * MB for _, results in rows], marker="o", label=label)
        ax.plot(worlds, [max(_held(r) for r in rows[0][1]) * MB * worlds[0] / w for w in worlds], ls="--",
                color="grey", label="1/N of the first")
        ax.set_xticks(worlds)
        ax.set_xlabel("workers N")
        ax.set_ylabel("MB per worker")
        ax.set_title(f"{size} ({mode} mode)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
