"""The exactness contract (docs/architecture.md): a step at N = 2 equals the step at N = 1.

Local mode (one process, every row owned) is the reference; the N = 2 workers hold
only their rows of the tables and item features under a fixed owner assignment,
project their own items, train on triplets r, r + 2, ... of the same global batch and
sum their gradients. Compared: the step's loss and every parameter after it (tables
gathered whole), after one step and after ten; and evaluation of the same parameters.

``MARGO_TEST_DEVICE=cuda`` runs the same comparisons on the GPU (``benchmarks/gpu_check.py``):
each worker on GPU ``rank % count``, gloo staging the collectives through host memory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from margo_dist.config import load_config
from margo_dist.data.dataset import VALID
from margo_dist.data.synth import SynthSpec, write_synthetic
from margo_dist.dist.comm import Communicator, LocalComm, TorchComm
from margo_dist.dist.launch import ensure_owner_shards
from margo_dist.dist.sharding import Placement
from margo_dist.graph.partition import load_owners
from margo_dist.variants import get_variant
from margo_dist.dist import checkpoint
from margo_dist.train.loop import Trainer, load_training_data
from margo_dist.train.rundir import RunDir

from margo_dist.dist.processes import run_workers

DEVICE = os.environ.get("MARGO_TEST_DEVICE", "cpu")
SPEC = SynthSpec(n_users=120, n_items=90, n_interactions=1500, modality_dims={"image": 12, "text": 8}, seed=0)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("contract") / "data")
    write_synthetic(SPEC, path, "mmrec")
    load_training_data(config(path, "margo"))  # build the graph artefacts once, before any worker
    return path


ALL_NEIGHBOURS = ["train.mode=sampled", "sampler.num_workers=0",
                  "sampler.fanouts={ui: [-1, -1], iu: [-1, -1], ii: [-1], uu: [-1]}"]


def config(data_dir: str, variant: str, batch_size: int = 256, extra: tuple[str, ...] = ()):
    return load_config("configs/default.yaml", [
        f"data.path={data_dir}", f"model.variant={variant}", "model.dim=8", "graph.user_k=5", "graph.item_k=3",
        f"train.batch_size={batch_size}", "train.progress=false", "run.dir=memory://contract", "train.seed=3",
        f"train.device={DEVICE}", *extra])


def owners(n_users: int, n_items: int, world: int) -> tuple[np.ndarray, np.ndarray]:
    """An owner assignment that interleaves the ids (not contiguous ranges, as METIS gives)."""
    rng = np.random.default_rng(7)
    return rng.permutation(n_users) % world, rng.permutation(n_items) % world


def steps(comm: Communicator, data_dir: str, variant: str, n_steps: int, evaluate: bool,
          batch_size: int = 256, extra: tuple[str, ...] = (), shards: tuple[str, ...] = ()) -> dict:
    """``n_steps`` steps of the variant's last stage; the loss of each, the whole state after.

    ``shards`` (one shard set URL per rank): the worker's view of a distributed run, the
    owners and its feature rows read from its shard set (``dist.launch.worker_main``).
    """
    cfg = config(data_dir, variant, batch_size, extra)
    if shards:
        data = load_training_data(cfg, shard=(shards[comm.rank], comm.rank))
        uo, io = (load_owners(shards[comm.rank])[t] for t in ("user", "item"))
    else:
        data = load_training_data(cfg)
        uo, io = owners(data.ds.n_users, data.ds.n_items, comm.world_size)
    trainer = Trainer(cfg, data, log=lambda _m: None, comm=comm, placement=Placement(comm, uo, io))
    stage = get_variant(variant).stages[-1]
    out: dict = {}
    if evaluate:
        out["valid"] = trainer.evaluate(stage, VALID)
    optimizer = trainer.new_optimizer()
    rng = np.random.default_rng(0)
    batches = (b for _ in range(n_steps) for b in trainer.batches(rng))  # epochs after one another
    losses = []
    for _ in range(n_steps):
        parts = trainer.train_step(stage, next(batches), optimizer)
        losses.append(parts.step_loss)  # the step's loss as the trainer reduces (and logs) it
    out["losses"] = losses
    out["state"] = {k: v.detach().cpu().clone() for k, v in trainer.model_state().items()}
    out["held"] = {n: int(p.numel()) for n, p in trainer.model.named_parameters()}
    out["features"] = sum(int(f.numel()) for f in trainer.features)
    return out


def worker(rank: int, world: int, data_dir: str, variant: str, n_steps: int, evaluate: bool,
           batch_size: int = 256, extra: tuple[str, ...] = (), shards: tuple[str, ...] = ()) -> dict:
    if DEVICE.startswith("cuda"):
        torch.cuda.set_device(rank % torch.cuda.device_count())
    return steps(TorchComm(), data_dir, variant, n_steps, evaluate, batch_size, extra, shards)


def staged_worker(rank: int, world: int, data_dir: str, variant: str, n_steps: int, evaluate: bool,
                  batch_size: int = 256, extra: tuple[str, ...] = ()) -> dict:
    """A worker whose communicator stages every collective through a host copy, as gloo does for
    workers whose tensors are on a GPU (``dist.gpus_per_worker=0.5``): on a CPU-only machine
    ``cpu:0`` is a device other than the tensors' ``cpu``, so each collective takes that path."""
    comm = TorchComm()
    comm.device = torch.device("cpu", 0)
    return steps(comm, data_dir, variant, n_steps, evaluate, batch_size, extra)


def max_rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("variant", ["margo", "wo_weight", "dragon", "lightgcn"])
def test_one_step_at_two_workers_equals_the_local_step(data_dir, variant):
    local = steps(LocalComm(), data_dir, variant, 1, evaluate=True)
    dist = run_workers(worker, 2, data_dir, variant, 1, True)
    for rank in range(2):
        assert dist[rank]["losses"][0] == pytest.approx(local["losses"][0], rel=1e-6)
        assert set(dist[rank]["state"]) == set(local["state"])
        for name, value in local["state"].items():
            assert max_rel_error(dist[rank]["state"][name], value) <= 1e-5, name
        # distributed evaluation (each worker ranks its own users, sums reduced) = local evaluation
        for metric, value in local["valid"].items():
            assert dist[rank]["valid"][metric] == pytest.approx(value, abs=1e-12), metric


@pytest.mark.parametrize("variant", ["margo", "lightgcn"])
def test_a_sampled_step_at_two_workers_and_fanout_minus_one_equals_the_local_full_step(data_dir, variant):
    """Sampled mode at N = 2: each worker samples blocks for its share of the step; the rows of
    the blocks' input nodes come from their owners (user rows fetched, items projected by
    their owners on request). At fan-out -1 that is the full-graph step."""
    local = steps(LocalComm(), data_dir, variant, 1, evaluate=False)
    dist = run_workers(worker, 2, data_dir, variant, 1, False, 256, tuple(ALL_NEIGHBOURS))
    for rank in range(2):
        assert dist[rank]["losses"][0] == pytest.approx(local["losses"][0], rel=1e-5)
        for name, value in local["state"].items():
            assert max_rel_error(dist[rank]["state"][name], value) <= 1e-5, name


@pytest.mark.parametrize("variant,extra", [("margo", ()), ("dragon", ()), ("margo", tuple(ALL_NEIGHBOURS))],
                         ids=["margo-full", "dragon-full", "margo-sampled"])
def test_collectives_staged_through_host_memory_take_the_local_step(data_dir, variant, extra):
    """Two workers sharing one GPU run gloo on host copies of their tensors (``_Staged``): the
    same step, including the column gather whose result is copied in after its forward."""
    local = steps(LocalComm(), data_dir, variant, 2, evaluate=True, extra=extra)
    dist = run_workers(staged_worker, 2, data_dir, variant, 2, True, 256, extra)
    for rank in range(2):
        assert dist[rank]["losses"] == pytest.approx(local["losses"], rel=1e-5)
        for name, value in local["state"].items():
            assert max_rel_error(dist[rank]["state"][name], value) <= 1e-5, name
        for metric, value in local["valid"].items():
            assert dist[rank]["valid"][metric] == pytest.approx(value, abs=1e-12), metric


@pytest.mark.parametrize("mode", ["full", "sampled"])
def test_workers_that_can_read_only_their_own_feature_rows_take_the_local_step(data_dir, tmp_path, mode):
    """Each worker gets a dataset folder without feature files and a shard set holding only
    its own shard's feature rows (a copy of the set with the other shard's rows removed);
    in sampled mode the dataset folder has no graph artefacts either and the set has no
    other shard's receptive field, so the worker's structure is its field. It reads nothing
    else, and the step, and the evaluation, still equal the local ones."""
    cfg = config(data_dir, "margo")
    shard_set = ensure_owner_shards(cfg, 2, progress=False)
    bare = tmp_path / "data"
    hidden = ["*_feat.npy", "shards-*"] + (["graphs-*"] if mode == "sampled" else [])
    shutil.copytree(data_dir, bare, ignore=shutil.ignore_patterns(*hidden))
    assert not list(bare.glob("*_feat.npy")) and list(Path(data_dir).glob("*_feat.npy"))
    cached = ".margo_cache/graphs-*"
    assert bool(list(bare.glob(cached))) == (mode == "full") and list(Path(data_dir).glob(cached))
    own = []
    for rank in range(2):
        copy = tmp_path / f"shards-seen-by-rank{rank}"
        shutil.copytree(shard_set, copy)
        shutil.rmtree(copy / f"part{1 - rank}" / "features")
        if mode == "sampled":
            shutil.rmtree(copy / f"part{1 - rank}" / "field")
        own.append(str(copy))
    local = steps(LocalComm(), data_dir, "margo", 1, evaluate=True)
    extra = tuple(ALL_NEIGHBOURS) if mode == "sampled" else ()
    dist = run_workers(worker, 2, str(bare), "margo", 1, True, 256, extra, tuple(own))
    assert sum(d["features"] for d in dist) == local["features"]  # the two shards' rows, each once
    for rank in range(2):
        assert dist[rank]["losses"][0] == pytest.approx(local["losses"][0], rel=1e-5)
        for name, value in local["state"].items():
            assert max_rel_error(dist[rank]["state"][name], value) <= 1e-5, name
        for metric, value in local["valid"].items():  # a field evaluates its own nodes exactly
            assert dist[rank]["valid"][metric] == pytest.approx(value, abs=1e-12), metric


def test_ten_steps_stay_within_1e4(data_dir):
    local = steps(LocalComm(), data_dir, "margo", 10, evaluate=False)
    dist = run_workers(worker, 2, data_dir, "margo", 10, False)
    np.testing.assert_allclose(dist[0]["losses"], local["losses"], rtol=1e-4)
    for name, value in local["state"].items():
        assert max_rel_error(dist[0]["state"][name], value) <= 1e-4, name


def test_each_worker_holds_half_of_every_table_and_of_the_features(data_dir):
    local = steps(LocalComm(), data_dir, "margo", 1, evaluate=False)
    dist = run_workers(worker, 2, data_dir, "margo", 1, False)
    sharded = [n for n in local["held"] if n.startswith(("encoder.preferences", "theta"))]
    assert len(sharded) == 3
    for rank in range(2):
        for name in sharded:
            assert dist[rank]["held"][name] <= 1.05 * local["held"][name] / 2, name
        assert dist[rank]["features"] <= 1.05 * local["features"] / 2
        dense = [n for n in local["held"] if n.startswith("encoder.projections")]
        assert all(dist[rank]["held"][n] == local["held"][n] for n in dense)  # replicated


def resume_steps(comm: Communicator, data_dir: str, start: str | None, first: int, n_steps: int,
                 save_to: str) -> dict:
    """MARGO calibration steps ``first .. first + n_steps - 1`` (step k trains on the first batch
    drawn with seed k), from the checkpoint in run folder ``start`` when given; writes its own
    checkpoint (one file per worker) to ``save_to`` and returns the whole state and moments."""
    cfg = config(data_dir, "margo")
    data = load_training_data(cfg)
    uo, io = owners(data.ds.n_users, data.ds.n_items, comm.world_size)
    trainer = Trainer(cfg, data, log=lambda _m: None, comm=comm, placement=Placement(comm, uo, io))
    optimizer = trainer.new_optimizer()
    if start is not None:
        checkpoint.load(RunDir(start), trainer.model, optimizer)
    for k in range(first, first + n_steps):
        trainer.train_step("calibrate", next(trainer.batches(np.random.default_rng(k))), optimizer)
    checkpoint.save(RunDir(save_to), comm, trainer.model, optimizer, {"coordinator": {}}, first + n_steps)
    return {"model": trainer.model_state()}


def resume_worker(rank: int, world: int, data_dir: str, start: str | None, first: int, n_steps: int,
                  save_to: str) -> dict:
    return resume_steps(TorchComm(), data_dir, start, first, n_steps, save_to)


def whole_moments(data_dir: str, run: str) -> dict[int, dict]:
    """The Adam moments of a checkpoint, loaded in one process (whole tables)."""
    trainer = Trainer(config(data_dir, "margo"), load_training_data(config(data_dir, "margo")), log=lambda _m: None)
    optimizer = trainer.new_optimizer()
    checkpoint.load(RunDir(run), trainer.model, optimizer)
    return optimizer.state_dict()["state"]


def test_a_checkpoint_of_two_workers_resumes_in_one_process_and_back(data_dir, tmp_path):
    runs = {name: str(tmp_path / name) for name in ("straight", "half", "rest", "local3", "back")}
    straight = resume_steps(LocalComm(), data_dir, None, 0, 6, runs["straight"])
    run_workers(resume_worker, 2, data_dir, None, 0, 3, runs["half"])  # 3 steps at N = 2: 2 shard files
    assert sorted(p.name for p in (tmp_path / "half" / checkpoint.SHARDS / "3").iterdir()) == ["rank0.pt", "rank1.pt"]
    local_rest = resume_steps(LocalComm(), data_dir, runs["half"], 3, 3, runs["rest"])  # 3 more in one process
    resume_steps(LocalComm(), data_dir, None, 0, 3, runs["local3"])
    back = run_workers(resume_worker, 2, data_dir, runs["local3"], 3, 3, runs["back"])[0]
    for name, value in straight["model"].items():
        assert max_rel_error(local_rest["model"][name], value) <= 1e-4, name
        assert max_rel_error(back["model"][name], value) <= 1e-4, name
    moments, rest_moments = whole_moments(data_dir, runs["straight"]), whole_moments(data_dir, runs["rest"])
    for k, entry in moments.items():
        assert max_rel_error(rest_moments[k]["exp_avg"], entry["exp_avg"]) <= 1e-4, k


@pytest.mark.parametrize("variant,extra", [("lightgcn", ()), ("margo", tuple(ALL_NEIGHBOURS))],
                         ids=["full", "sampled"])
def test_a_step_that_leaves_a_worker_without_triplets(data_dir, variant, extra):
    n_train = len(load_training_data(config(data_dir, "margo")).ds.split(0)[0])
    # batches of n_train - 1 and then 1 triplet: in the second step one worker has none (full
    # mode: worker 1; sampled mode: the worker that does not own the triplet's user, which
    # may still encode its items for the other)
    local = steps(LocalComm(), data_dir, variant, 2, evaluate=False, batch_size=n_train - 1, extra=extra)
    dist = run_workers(worker, 2, data_dir, variant, 2, False, n_train - 1, extra)
    for rank in range(2):
        np.testing.assert_allclose(dist[rank]["losses"], local["losses"], rtol=1e-5)
        for name, value in local["state"].items():
            assert max_rel_error(dist[rank]["state"][name], value) <= 1e-5, name


def fresh_checkpoint(rank: int, world: int, data_dir: str, run: str) -> int:
    cfg = config(data_dir, "margo")
    comm = TorchComm()
    data = load_training_data(cfg)
    uo, io = owners(data.ds.n_users, data.ds.n_items, world)
    trainer = Trainer(cfg, data, log=lambda _m: None, comm=comm, placement=Placement(comm, uo, io))
    optimizer = trainer.new_optimizer()
    trainer.train_step("pretrain", next(trainer.batches(np.random.default_rng(0))), optimizer)  # θ: no gradient
    checkpoint.save(RunDir(run), comm, trainer.model, optimizer, {"coordinator": {}}, 1)
    again = trainer.new_optimizer()
    checkpoint.load(RunDir(run), trainer.model, again)
    return len(again.state_dict()["state"])


def test_a_checkpoint_before_theta_has_a_gradient(data_dir, tmp_path):
    # every parameter but θ has Adam state, and the checkpoint loads back
    assert run_workers(fresh_checkpoint, 2, data_dir, str(tmp_path / "run")) == [10, 10]


def test_a_world_without_a_placement_is_refused(data_dir):
    class TwoWorkers(LocalComm):
        world_size = 2

    with pytest.raises(ValueError, match="needs a Placement"):
        Trainer(config(data_dir, "margo"), load_training_data(config(data_dir, "margo")), comm=TwoWorkers())


def norm_rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))


def test_bfloat16_steps_at_two_workers_equal_the_local_bfloat16_steps(data_dir):
    """train.precision=bfloat16 with bf16 features: each owner projects its own items in bf16,
    so two steps give the local bf16 steps' losses (and not the float32 ones). Parameters are
    compared by norm: a gradient component near zero is bf16 rounding noise, in which Adam's
    first step (lr * g / |g|) may go either way, by lr."""
    bf16 = ("train.precision=bfloat16", "data.feature_dtype=bfloat16")
    local = steps(LocalComm(), data_dir, "margo", 2, evaluate=False, extra=bf16)
    exact = steps(LocalComm(), data_dir, "margo", 2, evaluate=False)
    assert local["losses"] != pytest.approx(exact["losses"], rel=1e-6)
    dist = run_workers(worker, 2, data_dir, "margo", 2, False, 256, bf16)
    for rank in range(2):
        assert dist[rank]["losses"] == pytest.approx(local["losses"], rel=1e-4)
        for name, value in local["state"].items():
            assert norm_rel_error(dist[rank]["state"][name], value) <= 2e-3, name


@pytest.fixture(scope="module")
def gappy_dir(tmp_path_factory) -> str:
    """The contract's dataset with some items' image or text removed (zero rows, <modality>_present.npy)."""
    path = tmp_path_factory.mktemp("contract-gappy") / "data"
    write_synthetic(SPEC, str(path), "mmrec")
    for mod, gone in (("image", np.arange(0, SPEC.n_items, 5)), ("text", np.array([2, 33]))):
        feat = np.load(path / f"{mod}_feat.npy")
        feat[gone] = 0.0
        np.save(path / f"{mod}_feat.npy", feat)
        present = np.ones(SPEC.n_items, dtype=bool)
        present[gone] = False
        np.save(path / f"{mod}_present.npy", present)
    load_training_data(config(str(path), "margo"))
    return str(path)


@pytest.mark.parametrize("variant", ["margo", "dragon"])
def test_a_step_with_missing_pairs_at_two_workers_equals_the_local_step(gappy_dir, variant):
    """Missing (item, modality) pairs masked out of fusion, L_cal and the projection: the same
    on every worker as locally (each holds the whole presence table)."""
    local = steps(LocalComm(), gappy_dir, variant, 1, evaluate=True)
    dist = run_workers(worker, 2, gappy_dir, variant, 1, True)
    for rank in range(2):
        assert dist[rank]["losses"][0] == pytest.approx(local["losses"][0], rel=1e-6)
        for name, value in local["state"].items():
            assert max_rel_error(dist[rank]["state"][name], value) <= 1e-5, name
        for metric, value in local["valid"].items():
            assert dist[rank]["valid"][metric] == pytest.approx(value, abs=1e-12), metric
