"""The search file: typed like the train config, every searched value checked against it."""

from __future__ import annotations

import pytest

from margo_dist.config import load_config
from margo_dist.errors import ConfigError
from margo_dist.tune.space import STAGE2_KEYS, load_search, override, ray_space

FILE = "configs/tune/margo.yaml"


def test_the_shipped_search_is_the_papers_stage_two_grid_with_thetas_learning_rate():
    search = load_search(FILE)
    one, two = search.stage_keys()
    assert one == {} and set(two) == {"model.alpha", "model.tau", "train.weight_lr"} <= STAGE2_KEYS
    assert two["model.alpha"].candidates() == [0.001, 0.01, 0.1, 1.0]
    assert two["model.tau"].candidates() == [0.1, 0.5, 1.0, 2.0, 5.0]
    space = ray_space(search.space)
    assert space["model.tau"] == {"grid_search": [0.1, 0.5, 1.0, 2.0, 5.0]}


@pytest.mark.parametrize("bad, message", [
    ("max_concurent_trials=3", r"unknown key 'max_concurent_trials'"),
    ("space={model.alpah: {grid: [1]}}", r"space\.model\.alpah in .*unknown key 'model\.alpah'"),
    ("space={model.alpha: {grid: [x]}}", r"space\.model\.alpha .*expected float, got 'x'"),
    ("space={train.lr: {loguniform: [0, 1]}}", r"loguniform needs low > 0"),
    ("space={train.lr: {uniform: [1, 0.1]}}", r"uniform takes \[low, high\] with low < high"),
    ("space={train.lr: {grid: [0.1], choice: [0.2]}}", r"exactly one of grid, choice"),
    ("space={run.dir: {grid: [a]}}", r"run\.dir is set by the search"),
    ("metric=recall@7", r"train\.topk=\[5, 10, 20, 50\] lacks it"),
    ("asha={reduction_factor: 1}", r"asha\.reduction_factor=1 .* must be >= 2"),
    ("num_samples=two", r"num_samples: expected int, got 'two'"),
])
def test_a_bad_search_file_is_refused_naming_the_key(bad, message):
    with pytest.raises(ConfigError, match=message):
        load_search(FILE, [bad])


def test_random_dimensions_and_overrides():
    search = load_search(FILE, ["space={train.lr: {loguniform: [0.0001, 0.01]}, model.reg_weight: "
                                "{choice: [0.0, 0.001]}}"])
    one, two = search.stage_keys()
    assert set(one) == {"train.lr", "model.reg_weight"} and two == {}
    assert override("model.alpha", 0.1) == "model.alpha=0.1" and override("run.plots", False) == "run.plots=false"
    assert override("train.lr", 1e-7) == "train.lr=1.0e-07"  # PyYAML reads 1e-07 as a string
    assert load_config("configs/default.yaml", [override("train.lr", 1e-7)]).train.lr == 1e-7


def test_one_searched_key_is_shrunk_from_the_command_line_and_the_others_kept():
    search = load_search("configs/tune/margo.yaml", ["space.model.alpha=[0.1]", "space.train.lr={loguniform: "
                                                     "[1.0e-4, 1.0e-2]}", "dir=runs/tiny"])
    assert search.space["model.alpha"].grid == [0.1] and search.space["train.lr"].kind == "loguniform"
    assert search.space["model.tau"].grid == [0.1, 0.5, 1.0, 2.0, 5.0] and search.dir == "runs/tiny"
    with pytest.raises(ConfigError, match=r"space\.model\.alpha=0\.1 in command line .*give the values to try as "
                                          r"a list \(a grid, e\.g\. space\.model\.alpha=\[0\.1,1\.0\]\)"):
        load_search("configs/tune/margo.yaml", ["space.model.alpha=0.1"])
    with pytest.raises(ConfigError, match=r"unknown key 'space\.model\.alpha\.gird'"):
        load_search("configs/tune/margo.yaml", ["space.model.alpha={gird: [1]}"])
