"""docs/config.md is the generated reference of every config key, and the CLI prints it."""

from __future__ import annotations

import dataclasses
import os

import pytest
import yaml

from margo_dist import __version__
from margo_dist.cli import main
from margo_dist.config import Config, to_dict
from margo_dist.config_ref import key_docs, missing_meanings, reference_markdown

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        sub = Config() if not prefix else None
        if sub is not None and dataclasses.is_dataclass(getattr(sub, k)):
            out += _leaf_keys(v, f"{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


def test_docs_config_md_is_the_generated_reference():
    with open(os.path.join(ROOT, "docs", "config.md"), encoding="utf-8") as fh:
        on_disk = fh.read()
    assert on_disk == reference_markdown(), "docs/config.md is out of date: margo-dist config --keys > docs/config.md"


def test_every_key_is_in_the_reference_with_its_default_and_a_meaning():
    docs = {d.key: d for d in key_docs()}
    assert sorted(docs) == sorted(_leaf_keys(to_dict(Config())))
    assert missing_meanings() == []
    assert docs["model.alpha"].default == "0.1" and docs["model.alpha"].stage == "stage 2"
    assert docs["train.topk"].default == "[5, 10, 20, 50]" and docs["train.topk"].type == "list[int]"
    assert "weight of L_cal" in docs["model.alpha"].meaning
    assert "| `dist.workers` | int | `0` |" in reference_markdown()


def test_config_command_prints_the_resolved_tree(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  alpha: 0.5\n")
    assert main(["config", "--config", str(path), "train.seed=7"]) == 0
    tree = yaml.safe_load(capsys.readouterr().out)
    assert tree["model"]["alpha"] == 0.5 and tree["train"]["seed"] == 7 and tree["model"]["tau"] == 5.0
    assert main(["config", "model.alhpa=1"]) == 2
    assert "unknown key 'model.alhpa'" in capsys.readouterr().err
    assert main(["config", "--keys"]) == 0
    assert capsys.readouterr().out == reference_markdown()


def test_version_and_train_help(capsys):
    for argv in (["--version"], ["train", "--help"]):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"margo-dist {__version__} (python ")
    assert "variants (model.variant): margo, wo_weight" in out and "margo-dist config --keys" in out
