"""``dist.workers=N``: N Ray Train workers (``TorchTrainer``), the Ray plumbing of a run.

The driver does the offline steps once (dataset validation, graph artefacts, the
shard set whose owner arrays place the rows and which holds each shard's raw-feature
rows), joins Ray, starts the run's coordinator actor (``dist.coordination``) and then N
workers. What each worker runs is the caller's (``train/workers.py``: the ordinary
``Trainer`` with a :class:`TorchComm` and its :class:`Placement`, reading only its own
feature rows); ``worker_comm`` is its first step here (the process group Ray set up,
gloo on CPU, nccl on GPU). The training loop itself does not know how many workers
there are. The run folder is the local layout, written by rank 0.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import tempfile
import warnings
from typing import TYPE_CHECKING, Any, Callable

from margo_dist.config import Config, to_dict
from margo_dist.data import io as mio
from margo_dist.data.dataset import Dataset
from margo_dist.dist.checkpoint import CHECKPOINT, shard_file
from margo_dist.dist.coordination import coordinator_name, run_name, start_coordinator
from margo_dist.errors import ConfigError, DataError, MargoError

if TYPE_CHECKING:
    from margo_dist.dist.comm import Communicator, TorchComm
    from margo_dist.graph.build import GraphArtifacts

SHARD_METHOD = "metis"


def ensure_owner_shards(cfg: Config, parts: int, progress: bool = True, ds: Dataset | None = None,
                        art: GraphArtifacts | None = None) -> str:
    """URL of a shard set with ``parts`` shards for ``cfg``'s dataset (``ds`` and its graph
    artefacts ``art`` if already loaded): ``dist.shards``, or one made on first use (METIS)
    and cached by the graph's hash."""
    from margo_dist.data.formats import read_dataset_cfg
    from margo_dist.graph.build import shards_dir
    from margo_dist.graph.field import field_layers, fields_cover
    from margo_dist.graph.partition import MANIFEST, partition_graphs, read_shard_manifest
    from margo_dist.graph.source import load_graph_source

    ds = ds if ds is not None else read_dataset_cfg(cfg.data)
    if art is None:  # finding the artefacts hashes every feature row: once per driver
        art = load_graph_source(ds, cfg.data.path, cfg.graph, cfg.data.modalities, progress=progress)
    if cfg.dist.shards:
        man = read_shard_manifest(cfg.dist.shards)
        if man["parts"] != parts:
            raise ConfigError(f"dist.shards={cfg.dist.shards} has {man['parts']} shards, dist.workers={parts}")
        if man["graph_key"] != art.key:
            raise ConfigError(f"dist.shards={cfg.dist.shards} was made from other data or graph parameters "
                              f"(graph_key {man['graph_key']!r}; data.path={cfg.data.path} with this config gives "
                              f"{art.key!r}); rerun `margo-dist data partition`")
        if cfg.train.mode == "sampled" and not fields_cover(man, cfg.model.n_layers):
            raise ConfigError(f"dist.shards={cfg.dist.shards} holds receptive fields for {field_layers(man) or 0} "
                              f"propagation step(s); train.mode=sampled with model.n_layers={cfg.model.n_layers} "
                              "needs them: rerun `margo-dist data partition` with this config")
        return cfg.dist.shards
    url = shards_dir(cfg.data.path, cfg.graph, art.key, SHARD_METHOD, parts)
    # a cached set made before shards carried their feature rows and fields (or with fields
    # for fewer propagation steps) is made again
    if not (mio.exists(mio.join(url, MANIFEST)) and _usable(url, cfg.data.modalities, cfg.model.n_layers)):
        if progress:
            print(f"partitioning the graph into {parts} shards (owner arrays, feature rows, fields) at {url} ...",
                  flush=True)
        partition_graphs(art, cfg.data.modalities, url, parts, SHARD_METHOD, seed=cfg.train.seed,
                         features=ds.features, field_layers=cfg.model.n_layers)
    return url


def _usable(url: str, modalities: list[str], layers: int) -> bool:
    """Whether a cached shard set holds these modalities' feature rows and fields for ``layers`` steps."""
    from margo_dist.graph.field import fields_cover
    from margo_dist.graph.partition import read_shard_manifest

    try:
        man = read_shard_manifest(url)
    except DataError:  # an older format: made again
        return False
    return set(modalities) <= set(man.get("feature_rows", {})) and fields_cover(man, layers)


def worker_log(message: str) -> None:
    """One line on the worker's stdout, which Ray forwards to the driver once.

    Not ``print``: Ray Train patches it to write each line to its logger as well, and
    the job log would show every epoch line twice.
    """
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def rank_warnings(rank: int) -> None:
    """Show this worker's warnings (``warnings.warn``, from any library) as one line each,
    prefixed with its rank: the job log interleaves every worker's output."""
    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        worker_log(f"rank {rank}: {category.__name__}: {message} ({os.path.basename(filename)}:{lineno})")

    warnings.showwarning = show


def epoch_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """What a report after an epoch carries: the stage, epoch, training epochs (a search's
    ASHA clock) and the validation metrics as ``valid_<metric>``."""
    metrics: dict[str, Any] = {"stage": record["stage"], "epoch": record["epoch"],
                               "epochs_trained": record["epochs_trained"]}
    metrics.update({f"valid_{k}": v for k, v in record["valid"].items()})
    return metrics


def report_checkpoint(run_dir: str, comm: "Communicator", seq: int, record: dict[str, Any]) -> None:
    """Tell Ray Train of checkpoint ``seq`` (every worker, each for its own file).

    The rows are in the run folder already (``dist/checkpoint.py``); Ray gets a pointer to
    this worker's rows file and the commit record (both relative to ``run_dir``), and the
    latest validation metrics (``valid_<metric>``, with the stage and epoch) for its result
    and for Tune.
    """
    import ray.train

    metrics: dict[str, Any] = {"checkpoint_seq": seq, **(epoch_metrics(record) if record else {})}
    pointer = {"run_dir": run_dir, "rows": shard_file(seq, comm.rank), "commit": CHECKPOINT, "seq": seq}
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, f"rank{comm.rank}.json"), "w") as fh:
            json.dump(pointer, fh)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def worker_shard(cfg: Config, comm: "Communicator") -> tuple[str, int]:
    """The shard of ``dist.shards`` whose raw-feature rows this worker reads (its rank's)."""
    return cfg.dist.shards, comm.rank


def worker_comm(cfg: Config) -> "TorchComm":
    """A Ray Train worker's first steps for ``cfg``: join the process group Ray set up, write its
    pid to the run folder's ``workers/rank<r>.pid``, show warnings one line each with the rank, quiet Ray's per-report lines, warn of threads
    beyond the CPUs Ray reserved, and take the GPU Ray gave (``train.device``)."""
    from margo_dist.dist.comm import TorchComm

    comm = TorchComm()
    rank_warnings(comm.rank)
    # which process is which rank, for an operator (or a fault test) who must find one
    with mio.atomic_write(mio.join(cfg.run.dir, "workers", f"rank{comm.rank}.pid"), "w") as fh:
        fh.write(f"{os.getpid()}\n")
    # Ray Train logs each report at INFO through a logger outside ``ray.train`` (named by its
    # file), which LoggingConfig does not reach: the root level does
    logging.getLogger().setLevel(cfg.dist.ray_log_level)
    if cfg.train.threads > cfg.dist.cpus_per_worker:
        warnings.warn(f"train.threads={cfg.train.threads} is more than the dist.cpus_per_worker="
                      f"{cfg.dist.cpus_per_worker} CPU(s) Ray reserved for this worker: its threads compete "
                      f"for them (and with other workers' threads)", stacklevel=1)
    if cfg.dist.use_gpu:
        import ray.train.torch

        cfg.train.device = str(ray.train.torch.get_device())
    return comm


def restart_line(run: str, failures: int, max_failures: int, worker_exceptions: dict[int, BaseException]) -> str:
    """The driver log's line for the ``failures``-th failure of a run's worker group: which
    ranks failed and why, and whether Ray Train restarts the group.

    A rank whose process Ray Train lost (killed, crashed: its health check failed or hung) is
    named first, as ``lost``: it is the cause. The ranks that raised follow; after a loss they
    are usually the survivors whose collective lost its peer (gloo's "Connection reset by peer").
    """
    lost = {rank for rank, exc in worker_exceptions.items() if worker_lost(exc)}
    causes = "; ".join(f"rank {rank} lost ({failure_cause(exc)})" if rank in lost else
                       f"rank {rank}: {failure_cause(exc)}"
                       for rank, exc in sorted(worker_exceptions.items(), key=lambda kv: (kv[0] not in lost, kv[0])))
    then = (f"Ray Train restarts the worker group from the latest checkpoint (restart {failures} of "
            f"dist.max_failures={max_failures})" if failures <= max_failures else
            f"no restart left (dist.max_failures={max_failures}): the run fails")
    return f"{run}: worker group failed ({causes}); {then}"


def worker_lost(exc: BaseException) -> bool:
    """Whether Ray Train reports ``exc`` for a worker whose process it lost, rather than one
    that raised (Ray Train exports no public name for these two errors)."""
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError, WorkerHealthCheckTimeoutError

    return isinstance(exc, (WorkerHealthCheckFailedError, WorkerHealthCheckTimeoutError))


def failure_cause(exc: BaseException) -> str:
    """A worker's error as one short line: its type and the first line of its message."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def restart_callback(cfg: Config) -> Any:
    """A Ray Train callback that logs :func:`restart_line` once per worker-group failure.

    It runs in Ray Train's controller, whose output Ray forwards to the driver's log. Ray
    Train V2 calls ``after_exception`` once per failed poll of the group, before its failure
    policy restarts the group (up to ``max_failures`` times) or ends the run.
    """
    from ray.train import UserCallback

    run, max_failures = run_name(cfg.run.dir), cfg.dist.max_failures

    class RestartLines(UserCallback):
        def __init__(self) -> None:
            self.failures = 0

        def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
            self.failures += 1
            worker_log(restart_line(run, self.failures, max_failures, worker_exceptions))

    return RestartLines()


def train_distributed(cfg: Config, worker_loop: Callable[[dict[str, Any]], None],
                      coordinator: tuple[type, tuple[Any, ...]], log: Callable[[str], None] = print,
                      callbacks: list[Any] | None = None) -> None:
    """Run ``worker_loop`` (Ray's config dict of ``cfg`` in) on ``dist.workers`` Ray Train workers.

    ``coordinator``: the class and arguments of the run's stage machine, hosted as an actor
    named after the run (``dist/coordination.py``). The caller (``train/workers.py``) says what
    the workers run and reads the run folder after; this module holds the Ray plumbing.

    Ray is joined by ``dist.address`` (``dist.ray_session``: a private local instance by
    default); a request the cluster cannot hold is refused before any worker starts.
    ``callbacks`` go to Ray Train's ``RunConfig`` (a Tune trial passes
    ``TuneReportCallback``, which forwards rank 0's reports to Tune). Ctrl-C or SIGTERM
    stops the workers and ends with a :class:`MargoError`; the same command resumes.
    """
    import ray

    from margo_dist.data.synth import dataset_url
    from margo_dist.dist.cluster import require_shared_storage
    from margo_dist.dist.ray_session import check_resources, interrupts, ray_session, run_needs
    from margo_dist.data.formats import read_dataset_cfg
    from margo_dist.graph.source import load_graph_source
    from margo_dist.graph.tensors import knn_mix_weights

    cfg = copy.deepcopy(cfg)  # the driver fills in paths and the shard set for the workers
    n = cfg.dist.workers
    cfg.data.path = dataset_url(cfg.data.path, cfg.train.progress)
    # workers may start in another folder: local paths become absolute
    cfg.run.dir, cfg.data.path = mio.absolute(cfg.run.dir), mio.absolute(cfg.data.path)
    # the offline steps, once, here: validate the dataset, build its graph artefacts and shard set
    ds = read_dataset_cfg(cfg.data)
    art = load_graph_source(ds, cfg.data.path, cfg.graph, cfg.data.modalities, progress=cfg.train.progress)
    knn_mix_weights(cfg.data.modalities, cfg.graph.knn_mix)  # a bad graph.knn_mix fails here, not in the workers
    cfg.dist.shards = ensure_owner_shards(cfg, n, cfg.train.progress, ds, art)
    del ds, art
    received: list[str] = []
    try:
        with ray_session(cfg.dist.address, log) as joined, interrupts() as received:
            check_resources(run_needs(cfg.dist), joined)
            require_shared_storage({"run.dir": cfg.run.dir, "data.path": cfg.data.path})
            actor = start_coordinator(cfg.run.dir, *coordinator)
            try:
                _fit_run(cfg, worker_loop, actor, callbacks, log)
            finally:
                ray.kill(actor)
    except KeyboardInterrupt:  # the private instance is shut down by now
        raise MargoError(f"interrupted ({', '.join(received) or 'SIGINT'}): the workers of {cfg.run.dir} were "
                         "stopped; the same command resumes the run from its latest checkpoint") from None


def _fit_run(cfg: Config, worker_loop: Callable[[dict[str, Any]], None], coordinator: Any,
             callbacks: list[Any] | None, log: Callable[[str], None]) -> None:
    """Build the ``TorchTrainer`` for ``cfg`` and fit it; Ctrl-C or SIGTERM kills its controller
    (the workers with it) and goes on up as ``KeyboardInterrupt``.

    Ray Train's own SIGINT handler is kept out: it asks the controller to abort (which waits on
    a controller that is itself waiting, e.g. for resources), needs three Ctrl-C and then exits 0.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer


    n = cfg.dist.workers
    storage = None if "://" in cfg.run.dir else os.path.join(cfg.run.dir, "ray")
    backend = cfg.dist.backend or ("nccl" if cfg.dist.use_gpu else "gloo")
    resources: dict[str, float] = {"CPU": cfg.dist.cpus_per_worker}
    if cfg.dist.use_gpu:
        resources["GPU"] = cfg.dist.gpus_per_worker
    trainer = TorchTrainer(
        worker_loop, train_loop_config=to_dict(cfg),
        scaling_config=ScalingConfig(num_workers=n, use_gpu=cfg.dist.use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend=backend, timeout_s=cfg.dist.timeout_s),
        run_config=RunConfig(name=run_name(cfg.run.dir), storage_path=storage,
                             failure_config=FailureConfig(max_failures=cfg.dist.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             callbacks=[restart_callback(cfg), *(callbacks or [])],
                             # Ray Train's per-report INFO lines would bury the epoch lines in the job log
                             logging_config=LoggingConfig(log_level=cfg.dist.ray_log_level)))
    log(f"training on {n} Ray Train workers ({backend}{', GPU' if cfg.dist.use_gpu else ''}); "
        f"owners from {cfg.dist.shards}")
    controllers: list[Any] = []
    trainer._register_sigint_handler = controllers.append  # TorchTrainer.fit hands it its controller actor
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        for controller in controllers:
            ray.kill(controller)
        raise
    if result.checkpoint is not None:
        log(f"last checkpoint reported to Ray Train: {result.checkpoint.path}")
    state = ray.get(coordinator.state_dict.remote())
    log(f"coordinator {coordinator_name(cfg.run.dir)}: stages {list(state['results'])} done={state['done']}")
