"""One typed config tree, read from YAML with ``key=value`` overrides.

Every key has a type; an unknown key or a value of the wrong type is an error that
names the key and the file (or ``command line`` for overrides). Ray hands workers a
plain dict: convert it with :func:`from_dict` on the worker function's first line.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import fsspec
import yaml

from margo_dist.errors import ConfigError
from margo_dist.variants import VARIANTS
from margo_dist.precision import PRECISIONS


MERGE = "merge"  # field metadata: a mapping given for this field updates its value instead of replacing it
FANOUT_RELATIONS = ("ui", "iu", "ii", "uu")  # graph/sample.py's relations


@dataclass
class DataConfig:
    """Where the dataset is and how to read it."""

    path: str = ""  # empty: the built-in synthetic dataset, made on first use
    format: str = "mmrec"  # mmrec | parquet
    name: str = ""  # MMRec stem of <name>.inter; empty: the folder's only *.inter file
    modalities: list[str] = field(default_factory=lambda: ["image", "text"])  # the <name>_feat tables to fuse
    dedupe: bool = False  # drop duplicate (user, item) pairs instead of rejecting them
    # float32 | float16 | bfloat16: how the trainer holds the raw features (half the memory of
    # the largest table; upcast inside the projection, or fed to its bf16 autocast as they are)
    feature_dtype: str = "float32"
    # items without a modality's feature (the dataset's <modality>_present records; docs/amazon.md):
    # mask: the pair's fusion weight is exactly 0, L_cal runs over the present modalities and the
    # projection of a missing (zero) row is zero; mean: MMRec's fill (the modality's mean row, no mask);
    # zero: the zero rows taken as features (what a dataset without the records gets), for comparison
    missing: str = "mask"


@dataclass
class GraphConfig:
    """Parameters of the offline graph artefacts (all but the paths are part of their cache key)."""

    item_k: int = 10  # item kNN neighbours per modality
    user_k: int = 40  # user co-occurrence neighbours
    # weight of each modality's kNN graph in the mixed item graph; empty: DRAGON's
    # 0.1 image + 0.9 text when those are the modalities, else uniform.
    knn_mix: dict[str, float] = field(default_factory=dict)
    chunk_rows: int = 2048  # rows per block when computing similarities
    # float32 | bfloat16 | auto: the item-kNN similarity products; bfloat16 picks k + margin
    # candidates per item and re-scores them in float32 (graph/build.py item_knn)
    knn_precision: str = "float32"
    cache_dir: str = ""  # empty: <data.path>/.margo_cache
    # URL of a shard set (`margo-dist data partition`) to load the graph from instead of
    # the artefact cache; empty: use the cache. Not part of the cache key.
    shards: str = ""


@dataclass
class ModelConfig:
    """The model and the MARGO hyper-parameters (docs/equations.md sections 1-8, 10)."""

    variant: str = "margo"
    dim: int = 64  # embedding width of users, items and each modality's projection
    hidden_mult: int = 4  # projection MLP hidden width = hidden_mult * dim
    n_layers: int = 2  # propagation steps on the user-item graph
    alpha: float = 0.1  # weight of L_cal
    tau: float = 5.0  # confidence sensitivity (grid 0.1..5; chosen by the staged search, docs/search.md)
    reg_weight: float = 1e-3  # lambda
    fusion_scale: str = "one"  # one | num_modalities
    theta_init_std: float = 0.01  # theta ~ N(0, std^2) at the start of stage 2; 0: uniform weights


@dataclass
class TrainConfig:
    """The optimisation loop."""

    seed: int = 1  # every random draw of a run (initialisation, batches, sampling) follows from it
    lr: float = 1e-3  # Adam learning rate of the encoders and embeddings
    weight_lr: float = 0.01  # learning rate of the fusion-weight tables (θ); 0: train.lr
    batch_size: int = 2048  # training triplets (user, positive, negative) per step
    max_epochs: int = 200  # per stage
    patience: int = 20  # evaluations without validation improvement before stopping
    eval_every: int = 1  # epochs between validation evaluations
    eval_user_chunk: int = 4096  # users scored at once in full ranking
    topk: list[int] = field(default_factory=lambda: [5, 10, 20, 50])  # cut-offs of Recall@K and NDCG@K
    select_metric: str = "recall@20"  # the validation metric that picks each stage's best epoch
    # evaluate stage 2's starting state (stage 1's best, fresh θ) as its epoch 0 and keep it
    # if no later epoch beats it on validation; false: the paper as written (docs/equations.md 7)
    eval_stage_start: bool = True
    # score the test split once per stage, after its best epoch; a search's trials set it
    # false (validation only: the search reads the test split once, for the chosen trial)
    test_split: bool = True
    mode: str = "full"  # full | sampled
    device: str = "cpu"  # torch device of a local run (cuda, cuda:1, ...); workers use dist.use_gpu
    # float32 | bfloat16 | auto: the projection MLPs under bf16 autocast (float32 master weights,
    # losses, θ and softmax); auto: bfloat16 where the device runs it natively (precision.py)
    precision: str = "float32"
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    progress: bool = True  # per-batch progress bars on stderr (epoch lines are logged either way)


@dataclass
class SamplerConfig:
    """Neighbour sampling for train.mode=sampled.

    ``fanouts`` maps relation -> one fan-out per layer (-1: all neighbours):
    ``ui``/``iu`` for the propagation steps (one entry per step, input side first,
    as DGL's NeighborSampler orders them), ``ii``/``uu`` for the homogeneous item and
    user layer (one entry).
    """

    # ui/iu 40 from the planted benchmark (docs/results.md, "Sampled training"): 3 seeds of MARGO
    # sampled against full lost 4.7% test Recall@20 at 10, 3.3% at 20, 1.9% at 40. A step
    # reaches ~90% of the items even at 5 (benchmarks/bench_sampling_curve.py), so train.mode
    # stays full; lower fan-outs trade accuracy for speed.
    # a partial mapping (e.g. sampler.fanouts={ui: [10, 10]}) updates these relations and
    # keeps the others' defaults: a relation left out would otherwise silently take all neighbours
    fanouts: dict[str, list[int]] = field(
        default_factory=lambda: {"ui": [40, 40], "iu": [40, 40], "ii": [10], "uu": [20]},
        metadata={MERGE: True},
    )
    num_workers: int = 1  # DataLoader processes that sample while the main process computes


@dataclass
class RunConfig:
    """Where a run writes its outputs."""

    dir: str = "runs/default"  # the run folder: one experiment (docs/architecture.md, "Run folder and resume")
    resume: bool = True  # continue from the run folder's checkpoint when it exists
    checkpoint_every: int = 1  # epochs between checkpoints
    plots: bool = True  # learning curves and weight histograms as PNG in the run folder
    # run folder whose best stage-1 state starts stage 2 here (stage 1 is skipped); empty: train it
    pretrained: str = ""
    # the last stage to train (e.g. pretrain: a staged search's stage-1 runs); empty: every stage
    stop_after: str = ""


LOCAL, AUTO = "local", "auto"  # dist.address: a private Ray instance here; the running cluster


def address_problem(address: str) -> str:
    """Why ``address`` is not a ``dist.address`` value ('' when it is one)."""
    if address in ("", LOCAL, AUTO):
        return ""
    if split_host_port(address) is None:
        return "must be '', 'local', 'auto', HOST:PORT or ray://HOST:PORT (PORT a number)"
    return ""


def split_host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``HOST:PORT`` or ``ray://HOST:PORT`` (``[v6]:PORT`` too); None if not that form."""
    rest = address.removeprefix("ray://").rstrip("/")
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


@dataclass
class DistConfig:
    """Distributed training on Ray Train (``workers`` > 0); 0 is local mode (docs/architecture.md)."""

    workers: int = 0  # Ray Train workers (TorchTrainer); 0: one local process
    use_gpu: bool = False  # GPUs for the workers (nccl by default); else gloo on CPU
    gpus_per_worker: float = 1.0  # with use_gpu; 0.5 lets two workers share one GPU (needs backend=gloo)
    # collectives: "" picks nccl with use_gpu and gloo without; gloo with use_gpu stages
    # tensors through host memory (workers that share a GPU: nccl refuses two ranks on one)
    backend: str = ""
    cpus_per_worker: int = 1  # CPUs Ray reserves per worker (set train.threads to match)
    # worker-group restarts Ray Train may make (FailureConfig): one lost worker restarts the
    # group from the latest checkpoint instead of failing the run
    max_failures: int = 2
    timeout_s: int = 300  # a collective that hangs fails after this long (TorchConfig)
    ray_log_level: str = "WARNING"  # Ray Train's own log lines (LoggingConfig); INFO shows every report
    # shard set whose owner arrays place the rows (`margo-dist data partition --parts N`);
    # empty: a METIS shard set made on first use, cached by the graph's hash
    shards: str = ""
    # the Ray cluster a run joins (dist/ray_session.py): "local" starts a private instance on
    # 127.0.0.1 that ignores any other on the machine, "auto" joins the running one, HOST:PORT
    # or ray://HOST:PORT that one; empty: RAY_ADDRESS when set, else "local"
    address: str = ""


@dataclass
class Config:
    """The whole tree; ``margo-dist train --config FILE key=value ...`` builds it."""

    data: DataConfig = field(default_factory=DataConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    run: RunConfig = field(default_factory=RunConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def validate(self) -> None:
        """Check values that a type alone does not constrain."""
        checks = [
            ("model.variant", self.model.variant, tuple(VARIANTS)),
            ("data.format", self.data.format, ("mmrec", "parquet")),
            ("data.feature_dtype", self.data.feature_dtype, ("float32", "float16", "bfloat16")),
            ("data.missing", self.data.missing, ("mask", "mean", "zero")),
            ("train.precision", self.train.precision, PRECISIONS),
            ("graph.knn_precision", self.graph.knn_precision, PRECISIONS),
            ("model.fusion_scale", self.model.fusion_scale, ("one", "num_modalities")),
            ("train.mode", self.train.mode, ("full", "sampled")),
        ]
        for key, value, allowed in checks:
            if value not in allowed:
                raise ConfigError(f"{key}={value!r} is not one of {list(allowed)}")
        if not self.data.modalities:
            raise ConfigError("data.modalities is empty: at least one modality is needed")
        if len(set(self.data.modalities)) != len(self.data.modalities):
            raise ConfigError(f"data.modalities={self.data.modalities} repeats a name")
        positive = {
            "model.dim": self.model.dim,
            "model.tau": self.model.tau,
            "train.batch_size": self.train.batch_size,
            "train.lr": self.train.lr,
            "train.max_epochs": self.train.max_epochs,
            "train.patience": self.train.patience,
            "train.eval_every": self.train.eval_every,
            "graph.item_k": self.graph.item_k,
            "graph.chunk_rows": self.graph.chunk_rows,
            "train.eval_user_chunk": self.train.eval_user_chunk,
            "run.checkpoint_every": self.run.checkpoint_every,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{key}={value} must be > 0")
        for key, value in {"model.alpha": self.model.alpha, "model.reg_weight": self.model.reg_weight,
                           "model.theta_init_std": self.model.theta_init_std,
                           "graph.user_k": self.graph.user_k}.items():
            if value < 0:
                raise ConfigError(f"{key}={value} must be >= 0")
        for key, value in {"dist.workers": self.dist.workers, "dist.max_failures": self.dist.max_failures,
                           "train.weight_lr": self.train.weight_lr, "train.threads": self.train.threads}.items():
            if value < 0:
                raise ConfigError(f"{key}={value} must be >= 0")
        for key, value in {"dist.cpus_per_worker": self.dist.cpus_per_worker,
                           "dist.timeout_s": self.dist.timeout_s}.items():
            if value <= 0:
                raise ConfigError(f"{key}={value} must be > 0")
        if self.data.missing != "mask" and self.dist.workers > 0:
            raise ConfigError(f"data.missing={self.data.missing} with dist.workers={self.dist.workers}: the "
                              "comparison modes run locally (the mean needs every item's row, a worker holds "
                              "its own); distributed runs mask")
        for key, url in (("run.dir", self.run.dir), ("data.path", self.data.path)):
            if self.dist.workers > 0 and url.startswith("memory://"):
                raise ConfigError(f"{key}={url} with dist.workers={self.dist.workers}: memory:// is private to "
                                  "one process and the Ray workers run in others; use a path or an object-store "
                                  "URL (cluster/README.md)")
        if self.dist.backend not in ("", "gloo", "nccl"):
            raise ConfigError(f"dist.backend={self.dist.backend!r} must be '', 'gloo' or 'nccl'")
        if self.dist.backend == "nccl" and not self.dist.use_gpu:
            raise ConfigError("dist.backend=nccl needs dist.use_gpu=true (nccl reduces GPU tensors only)")
        gpus = self.dist.gpus_per_worker
        if not (0 < gpus <= 1 or float(gpus).is_integer()):
            raise ConfigError(f"dist.gpus_per_worker={gpus} must be a fraction in (0, 1] or a whole number")
        if self.dist.use_gpu and gpus < 1 and self.dist.backend != "gloo":
            raise ConfigError(f"dist.gpus_per_worker={gpus} puts several workers on one GPU, where nccl refuses "
                              "two ranks; set dist.backend=gloo")
        levels = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        if self.dist.ray_log_level not in levels:
            raise ConfigError(f"dist.ray_log_level={self.dist.ray_log_level!r} must be one of {', '.join(levels)}")
        problem = address_problem(self.dist.address)
        if problem:
            raise ConfigError(f"dist.address={self.dist.address!r}: {problem}")
        unknown = set(self.graph.knn_mix) - set(self.data.modalities)
        if unknown:
            raise ConfigError(f"graph.knn_mix names {sorted(unknown)}, not in data.modalities={self.data.modalities}")
        if self.train.select_metric.split("@")[0] not in ("recall", "ndcg"):
            raise ConfigError(f"train.select_metric={self.train.select_metric!r} must be recall@K or ndcg@K")
        self._check_fanouts()

    def _check_fanouts(self) -> None:
        """Relations and entries of ``sampler.fanouts`` always; list lengths only where
        train.mode=sampled reads them (a full-mode run with model.n_layers=3 keeps the defaults)."""
        fanouts = self.sampler.fanouts
        unknown = sorted(set(fanouts) - set(FANOUT_RELATIONS))
        if unknown:
            raise ConfigError(f"sampler.fanouts names unknown relation(s) {unknown}; "
                              f"the relations are {list(FANOUT_RELATIONS)}")
        for rel, values in fanouts.items():
            if any(v == 0 or v < -1 for v in values):
                raise ConfigError(f"sampler.fanouts.{rel}={values}: each entry is -1 (all neighbours) or > 0")
        if self.train.mode != "sampled":
            return
        steps = 0 if VARIANTS[self.model.variant].encoder == "bpr_mf" else self.model.n_layers
        for rel, values in fanouts.items():
            per_step = rel in ("ui", "iu")
            if per_step and steps == 0:  # BPR-MF propagates nothing: its ui/iu fan-outs are not read
                continue
            want = steps if per_step else 1
            if len(values) != want:
                why = f"one per propagation step, model.n_layers={steps}" if per_step else "one layer"
                raise ConfigError(f"sampler.fanouts.{rel}={values} has {len(values)} entries; "
                                  f"train.mode=sampled needs {want} ({why})")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints, and strings ``float()`` reads, are
    accepted for floats (PyYAML 1.1 reads ``1e-3`` as a string), but NaN and infinity are not."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__}) in {source}")
    if origin in (typing.Union, types.UnionType):
        if isinstance(value, str) and str in args:  # a string stays one: no number parsing for str
            return value
        for arg in args:
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                continue
        raise bad
    if tp is type(None):
        if value is None:
            return None
        raise bad
    if origin is list:
        if not isinstance(value, list):
            raise bad
        return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return {_coerce(k, args[0], f"{key} key", source): _coerce(v, args[1], f"{key}.{k}", source)
                for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise bad
        obj = tp()
        _apply(obj, value, f"{key}.", source)
        return obj
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad
        try:
            number = float(value)
        except (ValueError, OverflowError):
            raise bad from None
        if not math.isfinite(number):
            raise ConfigError(f"{key}={value!r} in {source}: NaN and infinity are not allowed; give a finite number")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise ConfigError(f"{key}: unsupported annotation {tp}")


def typed(value: Any, tp: Any, key: str, source: str) -> Any:
    """``value`` checked against the annotation ``tp`` (a dataclass type builds one), as a config
    key's value is: an error names ``key`` and ``source``."""
    return _coerce(value, tp, key, source)


def _apply(obj: Any, values: dict[str, Any], prefix: str, source: str) -> None:
    hints = typing.get_type_hints(type(obj))
    fields = dataclasses.fields(obj)
    names = {f.name for f in fields}
    merges = {f.name: f.metadata.get(MERGE, False) for f in fields}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise ConfigError(f"unknown key {key!r} in {source}; known keys here: {sorted(names)}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a mapping, got {value!r} in {source}")
            _apply(current, value, f"{key}.", source)
        else:
            value = _coerce(value, hints[name], key, source)
            if merges.get(name):
                value = {**current, **value}
            setattr(obj, name, value)


def _annotation(obj: Any, parts: list[str]) -> Any:
    """The annotation of the field ``parts`` names under the dataclass ``obj``; None where none does."""
    tp: Any = type(obj)
    for part in parts:
        if not (dataclasses.is_dataclass(tp) and isinstance(tp, type)):
            return None
        tp = typing.get_type_hints(tp).get(part)
    return tp


def _hash_count(value: Any) -> int:
    """How many '#' the strings of a parsed YAML value hold (fewer than its text: YAML cut a comment)."""
    if isinstance(value, str):
        return value.count("#")
    if isinstance(value, dict):
        return sum(_hash_count(k) + _hash_count(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(_hash_count(v) for v in value)
    return 0


def _parse_override(text: str, obj: Any) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} on the command line is not of the form key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r} on the command line: value is not valid YAML ({exc})") from exc
    if _hash_count(value) < raw.count("#"):
        if _annotation(obj, parts) is str:
            return parts, raw
        raise ConfigError(f"override {text!r} on the command line: YAML would read '#' as a comment and drop "
                          "the text after it, and an override has no comments; remove it, or quote a string")
    return parts, value


def from_dict(values: dict[str, Any], source: str = "a dict") -> Config:
    """Build a validated :class:`Config` from a nested dict (e.g. Ray's config)."""
    cfg = Config()
    _apply(cfg, values, "", source)
    cfg.validate()
    return cfg


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Read ``path`` (YAML), then apply ``key=value`` overrides, then validate."""
    cfg = load_into(Config(), path, overrides)
    cfg.validate()
    return cfg


T = typing.TypeVar("T")


def load_into(obj: T, path: str | None = None, overrides: list[str] | None = None) -> T:
    """Fill the dataclass tree ``obj`` from YAML ``path``, then ``key=value`` overrides:
    unknown keys and wrong types are errors naming the key and where it came from.

    An override splits at its first ``=``; the text after it is read as YAML (lists,
    mappings, numbers, booleans: ``train.topk=[10,20]``, ``sampler.fanouts={ui: [40, 40]}``),
    but an override has no comment syntax. Where YAML would take a ``#`` for the start of
    a comment (``run.dir=runs/a #1``), a str key gets the text as it is and any other key
    is refused, never silently cut. A ``#`` inside a word or a quoted string is kept.
    """
    if path:
        try:
            with fsspec.open(path, "rt") as fh:  # any fsspec URL, as every other file
                values = yaml.safe_load(fh) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        _apply(obj, values, "", path)
    for text in overrides or []:
        parts, value = _parse_override(text, obj)
        nested: Any = value
        for part in reversed(parts):
            nested = {part: nested}
        _apply(obj, nested, "", f"command line ({text})")
    return obj


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict of ``cfg`` (for YAML dumps and Ray)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
