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


@pytest.mark.parametrize("override", ["train.lr=.nan", "model.tau=.nan", "model.alpha=.inf", "train.lr=-.inf",
                                      "train.weight_lr=nan", "graph.knn_mix={image: .nan, text: 1}"])
def test_nan_and_infinity_are_refused_for_every_float_key(override):
    key = override.split("=")[0] + (".image" if "knn_mix" in override else "")
    with pytest.raises(ConfigError, match=rf"{key}=.*command line \({override}\).*NaN and infinity"):
        load_config(None, [override])


def test_nan_in_a_yaml_file_is_named_with_the_file(tmp_path):
    path = write(tmp_path, "model:\n  tau: .nan\n")
    with pytest.raises(ConfigError, match=r"model\.tau=nan in .*c\.yaml"):
        load_config(path)


def test_float_keys_take_every_float_spelling_but_str_keys_stay_text(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  lr: 1e-3\n  weight_lr: 2E-2\n"), ["model.alpha=5e-1"])
    assert (cfg.train.lr, cfg.train.weight_lr, cfg.model.alpha) == (0.001, 0.02, 0.5)
    assert load_config(None, ["run.dir=1e-3"]).run.dir == "1e-3"
    with pytest.raises(ConfigError, match=r"train\.lr: expected float, got 'fast' \(str\) in command line"):
        load_config(None, ["train.lr=fast"])


def test_an_override_has_no_comments():
    assert load_config(None, ["run.dir=runs/a #1"]).run.dir == "runs/a #1"
    assert load_config(None, ["run.dir=a=b"]).run.dir == "a=b"
    assert load_config(None, ["data.modalities=[te#xt]"]).data.modalities == ["te#xt"]
    assert load_config(None, ["train.topk=[10,20]"]).train.topk == [10, 20]
    with pytest.raises(ConfigError, match=r"train.lr=1e-3 #x.*comment"):
        load_config(None, ["train.lr=1e-3 #x"])
    with pytest.raises(ConfigError, match="comment"):
        load_config(None, ["train.topk=[10, 20] # 50"])


def test_a_partial_fanouts_mapping_keeps_the_other_relations(tmp_path):
    cfg = load_config(None, ["sampler.fanouts={ui: [5, 5]}"])
    assert cfg.sampler.fanouts == {"ui": [5, 5], "iu": [40, 40], "ii": [10], "uu": [20]}
    cfg = load_config(write(tmp_path, "sampler:\n  fanouts:\n    uu: [3]\n"))
    assert cfg.sampler.fanouts == {"ui": [40, 40], "iu": [40, 40], "ii": [10], "uu": [3]}


def test_fanouts_are_checked_when_the_config_is_read():
    with pytest.raises(ConfigError, match=r"unknown relation\(s\) \['ux'\]"):
        load_config(None, ["sampler.fanouts={ux: [5, 5]}"])
    with pytest.raises(ConfigError, match=r"sampler.fanouts.ii=\[0\]: each entry is -1"):
        load_config(None, ["sampler.fanouts={ii: [0]}"])
    with pytest.raises(ConfigError, match=r"sampler.fanouts.ui=\[40, 40\] has 2 entries.*needs 3"):
        load_config(None, ["train.mode=sampled", "model.n_layers=3"])
    assert load_config(None, ["model.n_layers=3"]).model.n_layers == 3  # full mode reads no fan-out
    load_config(None, ["train.mode=sampled", "model.n_layers=3", "sampler.fanouts={ui: [4, 4, 4], iu: [4, 4, 4]}"])
