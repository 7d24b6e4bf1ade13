"""The typed config tree: YAML, key=value overrides, and the errors for bad input."""

from __future__ import annotations

import pytest

from margo_dist.config import from_dict, load_config, to_dict
from margo_dist.errors import ConfigError


def write(tmp_path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_then_overrides(tmp_path):
    path = write(tmp_path, "model:\n  variant: wo_cal\n  alpha: 0.5\ntrain:\n  seed: 4\n")
    cfg = load_config(path, ["model.alpha=1", "data.modalities=[text]", "train.max_epochs=3"])
    assert cfg.model.variant == "wo_cal"
    assert cfg.model.alpha == 1.0 and isinstance(cfg.model.alpha, float)
    assert cfg.data.modalities == ["text"]
    assert cfg.train.seed == 4 and cfg.train.max_epochs == 3


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "model:\n  alpah: 0.5\n")
    with pytest.raises(ConfigError, match=r"model\.alpah.*c\.yaml"):
        load_config(path)


def test_wrong_type_names_key_and_file(tmp_path):
    path = write(tmp_path, "train:\n  seed: one\n")
    with pytest.raises(ConfigError, match=r"train\.seed.*expected int.*c\.yaml"):
        load_config(path)


def test_bad_override_is_named():
    with pytest.raises(ConfigError, match=r"train\.batch_size.*command line"):
        load_config(None, ["train.batch_size=big"])
    with pytest.raises(ConfigError, match="unknown key 'train.nope'"):
        load_config(None, ["train.nope=1"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(None, ["train.seed"])


def test_bool_is_not_an_int_and_values_are_checked():
    with pytest.raises(ConfigError, match="train.seed"):
        load_config(None, ["train.seed=true"])
    with pytest.raises(ConfigError, match="model.variant='margo2'"):
        load_config(None, ["model.variant=margo2"])
    with pytest.raises(ConfigError, match="model.tau=0.0 must be > 0"):
        load_config(None, ["model.tau=0"])


def test_ray_dict_round_trip():
    cfg = load_config(None, ["model.alpha=0.01", "sampler.fanouts={ui: [10, 5], iu: [10, 5], ii: [-1], uu: [20]}"])
    again = from_dict(to_dict(cfg), "ray config")
    assert again == cfg
    assert again.sampler.fanouts["uu"] == [20]
    with pytest.raises(ConfigError, match="ray config"):
        from_dict({"model": {"dim": "x"}}, "ray config")


def test_default_yaml_loads():
    cfg = load_config("configs/default.yaml")
    assert cfg.model.variant == "margo" and cfg.train.batch_size == 2048


def test_sharing_a_gpu_on_nccl_is_refused_when_the_config_is_read():
    with pytest.raises(ConfigError, match="nccl refuses two ranks"):
        load_config("configs/default.yaml", ["dist.workers=2", "dist.use_gpu=true", "dist.gpus_per_worker=0.5"])
    with pytest.raises(ConfigError, match="dist.backend=nccl needs dist.use_gpu=true"):
        load_config("configs/default.yaml", ["dist.workers=2", "dist.backend=nccl"])
