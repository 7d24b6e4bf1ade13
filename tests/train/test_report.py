"""Using a finished run from the command line: recommend, evaluate, and the one-line errors
for a run whose saved state was cut short or overwritten."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from margo_dist.cli import main
from margo_dist.config import load_config
from margo_dist.data.synth import SynthSpec, write_synthetic
from margo_dist.errors import MargoError
from margo_dist.train.loop import load_training_data
from margo_dist.train.entry import train
from margo_dist.train.rundir import CHECKPOINT, METRICS, SUMMARY, RunDir

OVERRIDES = ["model.dim=4", "graph.user_k=3", "graph.item_k=2", "train.max_epochs=1", "train.batch_size=128",
             "train.progress=false", "run.plots=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[str, list[str]]:
    """A finished two-stage run on 80 users and 60 items, and the overrides that made it."""
    root = tmp_path_factory.mktemp("report")
    data = str(root / "data")
    write_synthetic(SynthSpec(n_users=80, n_items=60, n_interactions=800, modality_dims={"image": 6, "text": 4},
                              seed=3), data, "mmrec")
    overrides = [f"data.path={data}", f"run.dir={root / 'run'}", *OVERRIDES]
    train(load_config("configs/default.yaml", overrides), log=lambda _m: None)
    return str(root / "run"), overrides


def copy_run(trained: tuple[str, list[str]], tmp_path) -> tuple[str, list[str]]:
    """A copy of the run to damage, and its overrides pointed at the copy."""
    run = str(tmp_path / "run")
    shutil.copytree(trained[0], run)
    return run, [o if not o.startswith("run.dir=") else f"run.dir={run}" for o in trained[1]]


def one_error_line(capsys, argv: list[str], *names: str) -> str:
    """Run the CLI; it must exit 2 with one ``error:`` line on stderr naming each of ``names``."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def test_recommend_never_returns_a_training_item_and_writes_raw_ids(trained, tmp_path, capsys):
    run, overrides = trained
    out = str(tmp_path / "rec.parquet")
    assert main(["recommend", run, "--k", "1000", "--out", out]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: --k 1000 cut to the items a user did not see in training") == 1, err
    rec = pq.read_table(out)
    assert rec.column_names == ["user_id", "user", "rank", "item_id", "item", "score"]
    rec = rec.to_pydict()
    assert np.isfinite(rec["score"]).all()
    indptr, indices = load_training_data(load_config("configs/default.yaml", overrides), build_graphs=False).train_csr
    for u in range(80):
        seen = set(indices[indptr[u]:indptr[u + 1]].tolist())
        mine = [i for user, i in zip(rec["user_id"], rec["item_id"]) if user == u]
        assert sorted(mine) == sorted(set(range(60)) - seen)  # every unseen item, no seen one
        assert [r for user, r in zip(rec["user_id"], rec["rank"]) if user == u] == list(range(1, len(mine) + 1))
    assert rec["user"] == [str(u) for u in rec["user_id"]] and rec["item"] == [str(i) for i in rec["item_id"]]

    assert main(["recommend", run, "--k", "5", "--out", out]) == 0
    assert "warning" not in capsys.readouterr().err
    assert pq.read_table(out).num_rows == 80 * 5


def test_recommend_writes_the_datasets_raw_ids(trained, tmp_path, capsys):
    run, overrides = copy_run(trained, tmp_path)
    data = next(o for o in overrides if o.startswith("data.path="))[len("data.path="):]
    shutil.copytree(data, tmp_path / "data")
    (tmp_path / "data" / "user_map.tsv").write_text("raw_id\tid\n" + "".join(f"u{u}\t{u}\n" for u in range(80)))
    (tmp_path / "data" / "item_map.tsv").write_text("raw_id\tid\n" + "".join(f"i{i}\t{i}\n" for i in range(60)))
    config = tmp_path / "run" / "config.yaml"
    config.write_text(config.read_text().replace(data, str(tmp_path / "data")))
    out = str(tmp_path / "rec.parquet")
    assert main(["recommend", run, "--k", "3", "--out", out]) == 0
    rec = pq.read_table(out).to_pydict()
    assert rec["user"] == [f"u{u}" for u in rec["user_id"]] and rec["item"] == [f"i{i}" for i in rec["item_id"]]


def test_item_weights_and_report_name_items_by_raw_id_beside_the_internal_one(tmp_path, capsys):
    data = tmp_path / "data"
    write_synthetic(SynthSpec(n_users=80, n_items=60, n_interactions=800, modality_dims={"image": 6, "text": 4},
                              seed=3), str(data), "mmrec")
    (data / "item_map.tsv").write_text("raw_id\tid\n" + "".join(f"B{i:09d}\t{i}\n" for i in range(60)))
    run = tmp_path / "run"
    train(load_config("configs/default.yaml", [f"data.path={data}", f"run.dir={run}", *OVERRIDES]),
          log=lambda _m: None)
    table = pq.read_table(run / "item_weights.parquet")
    assert table.column_names == ["item_id", "item", "image", "text"]
    assert table.column("item").to_pylist() == [f"B{i:09d}" for i in table.column("item_id").to_pylist()]
    assert main(["report", str(run), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "items as raw id [internal id]=weight" in lines
    most = next(ln for ln in lines if ln.startswith("most reliable 'image': "))
    first = most.split(": ", 1)[1].split(", ")[0]
    assert first.startswith("B0000000") and first.split(" [")[1].split("]")[0] == str(int(first[1:10]))
    assert not any(ln.startswith("most reliable 'text'") for ln in lines)  # the image lists, swapped


def test_evaluate_json_prints_the_json_alone(trained, capsys):
    assert main(["evaluate", trained[0], "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"valid", "test"} and "recall@20" in result["test"]
    assert main(["evaluate", trained[0]]) == 0
    assert "recall@20" in capsys.readouterr().out.splitlines()[0]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_a_damaged_best_state_is_one_error_line(trained, tmp_path, capsys, damage):
    run, _ = copy_run(trained, tmp_path)
    best = tmp_path / "run" / "best_calibrate.pt"
    if damage == "truncate":
        best.write_bytes(best.read_bytes()[:100])
    elif damage == "garbage":
        best.write_bytes(b"not a checkpoint" * 10)
    else:
        best.unlink()
    for command in (["evaluate", run], ["recommend", run, "--out", str(tmp_path / "r.parquet")]):
        line = one_error_line(capsys, command, str(best))
        assert "run.resume=false" in line or damage == "missing"
    assert not (tmp_path / "r.parquet").exists()


def test_training_on_a_damaged_checkpoint_is_one_error_line(trained, tmp_path, capsys):
    run, overrides = copy_run(trained, tmp_path)
    ckpt = tmp_path / "run" / CHECKPOINT
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    line = one_error_line(capsys, ["train", "--config", "configs/default.yaml", *overrides], str(ckpt))
    assert "set run.resume=false to start the run afresh" in line


def test_a_damaged_shard_summary_or_metrics_file_is_named(trained, tmp_path, capsys):
    run, _ = copy_run(trained, tmp_path)
    rundir = RunDir(run)
    seq = rundir.load_state(CHECKPOINT)["seq"]
    shard = f"checkpoint-shards/{seq}/rank0.pt"
    (tmp_path / "run" / shard).write_bytes(b"\x00" * 50)
    with pytest.raises(MargoError, match=rf"{shard} is cut short or not a saved state .*run.resume=false.*"
                                         rf"or delete .*{CHECKPOINT}"):
        rundir.load_state(shard)
    (tmp_path / "run" / METRICS).write_text('{"stage": "pretrain", "epoch": 1}\n{"stage": "pre')
    with pytest.raises(MargoError, match=rf"{METRICS}, line 2: not valid JSON \(Unterminated string.*, column"):
        rundir.read_metrics()
    (tmp_path / "run" / SUMMARY).write_bytes(b"\xff\xfe garbage")
    one_error_line(capsys, ["report", run], str(tmp_path / "run" / SUMMARY))
    (tmp_path / "run" / SUMMARY).write_text('{"valid": {')
    one_error_line(capsys, ["report", run], str(tmp_path / "run" / SUMMARY), "not valid JSON")
