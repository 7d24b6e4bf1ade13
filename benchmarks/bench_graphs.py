"""Time and memory of the offline graph artefacts at Amazon Baby and Elec scale.

For each size a synthetic dataset of that shape is generated
(``margo_dist.data.synth.make_synthetic``); then each step -- one item kNN graph per
modality and the user co-occurrence graph -- runs in its own fresh process ('spawn'),
so a step's peak memory is not hidden by an earlier step's. Peak growth is the
process's peak RSS during the step minus its RSS just before it: the kernel's peak
counter is reset after the inputs are loaded (``/proc/self/clear_refs``), with
``getrusage`` as the fallback where that file cannot be written.

    python benchmarks/bench_graphs.py --sizes baby,elec
    python benchmarks/bench_graphs.py --quick
    python benchmarks/bench_graphs.py --sizes tiny      # the smoke tests' size (tests/benchmarks), seconds
    python benchmarks/bench_graphs.py --sizes elec --steps knn:text,cooccurrence
    python benchmarks/bench_graphs.py --sizes elec --steps knn:image --precision float32,bfloat16

``--precision`` runs every kNN step once per precision (bfloat16: candidates from bf16
products, re-scored in float32; ``graph.knn_precision``) and reports, beside the time,
the neighbour recall against the float32 lists, the rows recomputed exactly, and the
bfloat16/float32 time ratio.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

SIZES: dict[str, dict] = {
    "tiny": dict(n_users=150, n_items=80, n_interactions=1500, modality_dims={"image": 12, "text": 8}),
    "quick": dict(n_users=2000, n_items=800, n_interactions=20000, modality_dims={"image": 256, "text": 64}),
    "baby": dict(n_users=19445, n_items=7050, n_interactions=160792, modality_dims={"image": 4096, "text": 384}),
    "elec": dict(n_users=192403, n_items=63001, n_interactions=1689188,
                 modality_dims={"image": 4096, "text": 384}),
}


@dataclass
class StepResult:
    size: str
    step: str
    rows: int
    dim: int
    seconds: float
    rss_before_mb: float
    peak_growth_mb: float
    output_mb: float
    peak_source: str
    precision: str = "float32"
    recall: float | None = None  # neighbour recall against the float32 lists (kNN, bfloat16)
    rows_recomputed: int | None = None


def _status_kb(field: str) -> int | None:
    """A field of /proc/self/status in kB (VmRSS, VmHWM), or None off Linux."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _run_step(step: str, workdir: str, item_k: int, user_k: int, chunk_rows: int, precision: str = "float32"
              ) -> dict:
    """Child process: load the inputs of one step, reset the peak counter, run it."""
    from margo_dist.graph.build import item_knn, user_cooccurrence

    if step.startswith("knn:"):
        modality = step.split(":", 1)[1]
        feat = np.load(os.path.join(workdir, f"feat_{modality}.npy"), allow_pickle=False)
        rows, dim = feat.shape
    else:
        user = np.load(os.path.join(workdir, "train_user.npy"), allow_pickle=False)
        item = np.load(os.path.join(workdir, "train_item.npy"), allow_pickle=False)
        n_users, n_items = (int(v) for v in np.load(os.path.join(workdir, "sizes.npy"), allow_pickle=False))
        rows, dim = n_users, n_items
    before_kb = _status_kb("VmRSS")
    reset = _reset_peak() and before_kb is not None
    ru_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    stats: dict[str, int] = {}
    if step.startswith("knn:"):
        out = item_knn(feat, item_k, chunk_rows, name=modality, precision=precision, stats=stats)
        np.save(os.path.join(workdir, f"knn_{modality}_{precision}.npy"), out[0], allow_pickle=False)
    else:
        out = user_cooccurrence(user, item, n_users, n_items, user_k, chunk_rows)
    seconds = time.perf_counter() - start
    if reset:
        peak_kb, source = _status_kb("VmHWM"), "VmHWM"
        growth_kb = (peak_kb or 0) - before_kb
    else:
        ru_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        growth_kb, source = ru_after - (before_kb or ru_before), "ru_maxrss"
    return dict(rows=rows, dim=dim, seconds=seconds, rss_before_mb=(before_kb or ru_before) / 1024,
                peak_growth_mb=max(growth_kb, 0) / 1024, output_mb=sum(a.nbytes for a in out) / 2**20,
                peak_source=source, precision=precision, rows_recomputed=stats.get("rows_recomputed"))


def neighbour_recall(idx: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each row's exact neighbours that ``idx`` found."""
    if exact.shape[1] == 0:
        return 1.0
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(idx, exact))
    return hits / exact.size


def _steps(spec: dict) -> list[str]:
    return [f"knn:{m}" for m in spec["modality_dims"]] + ["cooccurrence"]


def _prepare(size: str, spec: dict, workdir: str, seed: int) -> float:
    """Generate the dataset and write each step's inputs; returns the seconds taken."""
    from margo_dist.data.dataset import TRAIN
    from margo_dist.data.synth import make_synthetic

    start = time.perf_counter()
    ds, _truth = make_synthetic(spec["n_users"], spec["n_items"], spec["n_interactions"],
                                spec["modality_dims"], seed=seed)
    gen = time.perf_counter() - start
    user, item = ds.split(TRAIN)
    np.save(os.path.join(workdir, "train_user.npy"), user.astype(np.int64), allow_pickle=False)
    np.save(os.path.join(workdir, "train_item.npy"), item.astype(np.int64), allow_pickle=False)
    np.save(os.path.join(workdir, "sizes.npy"), np.array([ds.n_users, ds.n_items]), allow_pickle=False)
    for name, feat in ds.features.items():
        np.save(os.path.join(workdir, f"feat_{name}.npy"), np.asarray(feat, np.float32), allow_pickle=False)
    print(f"[{size}] generated {ds.n_users} users, {ds.n_items} items, {len(ds.user)} interactions "
          f"({len(user)} train), modalities {dict(spec['modality_dims'])} in {gen:.1f}s", flush=True)
    return gen


def _table(results: list[StepResult]) -> str:
    head = ("size", "step", "precision", "rows", "cols", "seconds", "RSS before MB", "peak growth MB", "output MB",
            "dense rows^2 MB", "recall", "recomputed")
    rows = [(r.size, r.step, r.precision, f"{r.rows:,}", f"{r.dim:,}", f"{r.seconds:.1f}", f"{r.rss_before_mb:.0f}",
             f"{r.peak_growth_mb:.0f}", f"{r.output_mb:.1f}", f"{r.rows * r.rows * 4 / 2**20:,.0f}",
             "-" if r.recall is None else f"{r.recall:.4f}",
             "-" if r.rows_recomputed is None else f"{r.rows_recomputed:,}")
            for r in results]
    widths = [max(len(h), *(len(row[c]) for row in rows)) for c, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    note = ("cols: feature dimension (knn) or items (cooccurrence); dense rows^2: what one float32 "
            "n x n similarity matrix would take; recall: neighbour recall against the float32 lists; "
            "recomputed: rows a bfloat16 kNN recomputed exactly")
    ratios = []
    for r in results:
        ref = next((x for x in results if (x.size, x.step, x.precision) == (r.size, r.step, "float32")), None)
        if r.precision != "float32" and ref is not None:
            ratios.append(f"[{r.size}] {r.step} {r.precision}/float32 time ratio: {r.seconds / ref.seconds:.2f}")
    return "\n".join([line(head), sep, *(line(r) for r in rows), note, *ratios])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="baby,elec", help=f"comma-separated, from {sorted(SIZES)}")
    ap.add_argument("--quick", action="store_true", help="only the small smoke size (overrides --sizes)")
    ap.add_argument("--item-k", type=int, default=10)
    ap.add_argument("--user-k", type=int, default=40)
    ap.add_argument("--chunk-rows", "--block-rows", dest="chunk_rows", type=int, default=2048,
                    help="rows per similarity chunk (graph.chunk_rows; --block-rows is its old name)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", default="",
                    help="comma-separated subset of knn:<modality>, cooccurrence (default: all)")
    ap.add_argument("--precision", default="float32",
                    help="comma-separated kNN precisions: float32, bfloat16 (float32 first gives the recall)")
    args = ap.parse_args(argv)
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    if set(precisions) - {"float32", "bfloat16"}:
        ap.error(f"--precision: {args.precision!r} holds other than float32, bfloat16")
    only = {s.strip() for s in args.steps.split(",") if s.strip()}
    sizes = ["quick"] if args.quick else [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        ap.error(f"--sizes: unknown size(s) {unknown}; choose from {sorted(SIZES)}")
    for size in sizes:
        unknown_steps = only - set(_steps(SIZES[size]))
        if unknown_steps:
            ap.error(f"--steps: {sorted(unknown_steps)} not among size {size}'s steps {_steps(SIZES[size])}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, item_k={args.item_k}, "
          f"user_k={args.user_k}, chunk_rows={args.chunk_rows}", flush=True)
    results: list[StepResult] = []
    ctx = mp.get_context("spawn")
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix=f"bench-graphs-{size}-") as workdir:
            _prepare(size, SIZES[size], workdir, args.seed)
            for step in (s for s in _steps(SIZES[size]) if not only or s in only):
                for precision in (precisions if step.startswith("knn:") else ["float32"]):
                    with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                        res = pool.submit(_run_step, step, workdir, args.item_k, args.user_k, args.chunk_rows,
                                          precision).result()
                    r = StepResult(size=size, step=step, **res)
                    exact = os.path.join(workdir, f"knn_{step[4:]}_float32.npy")
                    if precision != "float32" and os.path.exists(exact):
                        r.recall = neighbour_recall(np.load(os.path.join(workdir, f"knn_{step[4:]}_{precision}.npy")),
                                                    np.load(exact))
                    results.append(r)
                    print(f"[{size}] {step} {precision}: {r.seconds:.1f}s, peak growth {r.peak_growth_mb:.0f} MB "
                          f"({r.peak_source})", flush=True)
    print()
    print(_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
