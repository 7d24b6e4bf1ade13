"""The search file: what ``margo-dist tune --config FILE [key=value ...]`` reads.

One typed tree like the training config (unknown keys and wrong types are errors that
name the key and the file). ``space`` maps a training-config key to one way of drawing
it: ``grid`` (every value, in every combination with the other grids), ``choice`` (one
value at random per sample), ``uniform`` or ``loguniform`` (``[low, high]``). Every
value a dimension can take is checked against the training config before a trial
starts.

Stage-2 keys (``STAGE2_KEYS``) change nothing before the calibration stage, so a staged
search trains stage 1 once per stage-1 setting and starts every stage-2 trial from the
best of those (``search.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from margo_dist.config import Config, load_config, load_into, typed
from margo_dist.errors import ConfigError

# keys that act only in the calibration stage (θ, L_cal): the pretraining is the same whatever they are
STAGE2_KEYS = frozenset({"model.alpha", "model.tau", "train.weight_lr", "model.theta_init_std"})
KINDS = ("grid", "choice", "uniform", "loguniform")


@dataclass
class Dimension:
    """One searched key: exactly one of the four fields is set."""

    grid: list[bool | int | float | str] = field(default_factory=list)
    choice: list[bool | int | float | str] = field(default_factory=list)
    uniform: list[float] = field(default_factory=list)
    loguniform: list[float] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k))

    def candidates(self) -> list[Any]:
        """Values that stand for what the dimension can draw (checked against the train config)."""
        return list(getattr(self, self.kind))


@dataclass
class AshaConfig:
    """ASHA early stopping on the validation metric; its clock is the trial's training epochs."""

    enabled: bool = True
    grace_period: int = 1  # epochs every trial trains before it can be stopped
    reduction_factor: int = 2  # 1/reduction_factor of the trials go on at each rung


@dataclass
class SearchConfig:
    """A search: the training config it varies, the space, and how trials run."""

    train_config: str = "configs/default.yaml"
    overrides: list[str] = field(default_factory=list)  # key=value on the train config, for every trial
    space: dict[str, Dimension] = field(default_factory=dict)
    num_samples: int = 1  # samples of the random dimensions (times the grid)
    max_concurrent_trials: int = 2
    trial_workers: int = 0  # dist.workers of each trial: 0 runs it in one local process
    cpus_per_trial: int = 1  # CPUs a local trial reserves (its torch threads when train.threads=0)
    metric: str = "recall@20"  # validation metric that ASHA and the selection use
    staged: bool = True  # stage 1 once per stage-1 setting, stage-2 trials from the best of them
    asha: AshaConfig = field(default_factory=AshaConfig)
    dir: str = "runs/search"  # the search folder: Tune's state, trial runs, results
    seed: int = 0  # of the random dimensions' draws

    def train_base(self) -> Config:
        """The training config every trial starts from."""
        return load_config(self.train_config, self.overrides)

    def stage_keys(self) -> tuple[dict[str, Dimension], dict[str, Dimension]]:
        """The space split into (stage-1 keys, stage-2 keys)."""
        one = {k: d for k, d in self.space.items() if k not in STAGE2_KEYS}
        two = {k: d for k, d in self.space.items() if k in STAGE2_KEYS}
        return one, two

    def validate(self, source: str) -> None:
        base = self.train_base()
        for key, dim in self.space.items():
            where = f"space.{key} in {source}"
            set_kinds = [k for k in KINDS if getattr(dim, k)]
            if len(set_kinds) != 1:
                raise ConfigError(f"{where}: give exactly one of {', '.join(KINDS)}, got {set_kinds or 'none'}")
            if key.startswith(("run.", "dist.")) or key == "data.path":
                raise ConfigError(f"{where}: {key} is set by the search, not searched")
            if dim.kind in ("uniform", "loguniform"):
                low_high = dim.candidates()
                if len(low_high) != 2 or not low_high[0] < low_high[1]:
                    raise ConfigError(f"{where}: {dim.kind} takes [low, high] with low < high, got {low_high}")
                if dim.kind == "loguniform" and low_high[0] <= 0:
                    raise ConfigError(f"{where}: loguniform needs low > 0, got {low_high[0]}")
            for value in dim.candidates():
                # the train config's own checks: an unknown key or a wrong type names the key
                try:
                    load_config(self.train_config, [*self.overrides, override(key, value)])
                except ConfigError as exc:
                    raise ConfigError(f"{where}: {exc}") from None
        for name, value in {"num_samples": self.num_samples, "max_concurrent_trials": self.max_concurrent_trials,
                            "cpus_per_trial": self.cpus_per_trial, "asha.grace_period": self.asha.grace_period}.items():
            if value < 1:
                raise ConfigError(f"{name}={value} in {source} must be >= 1")
        if self.asha.reduction_factor < 2:
            raise ConfigError(f"asha.reduction_factor={self.asha.reduction_factor} in {source} must be >= 2")
        if self.trial_workers < 0:
            raise ConfigError(f"trial_workers={self.trial_workers} in {source} must be >= 0")
        if self.metric.split("@")[0] not in ("recall", "ndcg"):
            raise ConfigError(f"metric={self.metric!r} in {source} must be recall@K or ndcg@K")
        topk = base.train.topk
        if int(self.metric.split("@")[1]) not in topk:
            raise ConfigError(f"metric={self.metric!r} in {source}: the train config's train.topk={topk} lacks it")


def _yaml_scalar(value: Any) -> str:
    """``value`` as the text of a key=value override."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isfinite(value):
        text = repr(value)
        mantissa, _, exponent = text.partition("e")
        # YAML 1.1 (PyYAML) reads 1e-07 as a string; 1.0e-07 is a float
        return f"{mantissa}.0e{exponent}" if exponent and "." not in mantissa else text
    return str(value)


def load_search(path: str, overrides: list[str] | None = None) -> SearchConfig:
    """Read a search file, apply ``key=value`` overrides, validate.

    ``space.KEY=VALUE`` sets one searched key and keeps the others: a list is a grid
    (``space.model.alpha=[0.1,1.0]``), a mapping any dimension
    (``space.train.lr={loguniform: [1e-4, 1e-2]}``); ``space={...}`` replaces the whole space.
    """
    plain = [o for o in overrides or [] if not o.startswith(SPACE_PREFIX)]
    search = load_into(SearchConfig(), path, plain)
    for text in overrides or []:
        if text.startswith(SPACE_PREFIX):
            key, value = _space_override(text)
            search.space[key] = value
    search.validate(path)
    return search


SPACE_PREFIX = "space."


def _space_override(text: str) -> tuple[str, Dimension]:
    """``space.KEY=VALUE`` as (KEY, its dimension)."""
    key, sep, raw = text[len(SPACE_PREFIX):].partition("=")
    source = f"command line ({text})"
    if not sep or not key:
        raise ConfigError(f"override {text!r} on the command line is not of the form space.KEY=VALUE")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r} on the command line: value is not valid YAML ({exc})") from exc
    if isinstance(value, list):
        value = {"grid": value}
    if not isinstance(value, dict):
        raise ConfigError(f"space.{key}={raw} in {source}: give the values to try as a list (a grid, e.g. "
                          f"space.{key}=[0.1,1.0]) or a dimension (e.g. space.{key}={{loguniform: [1e-4, 1e-2]}})")
    return key, typed(value, Dimension, f"space.{key}", source)


def ray_space(space: dict[str, Dimension]) -> dict[str, Any]:
    """Tune's ``param_space`` entries for ``space`` (flat, keyed by the dotted train key)."""
    from ray import tune

    make = {"grid": tune.grid_search, "choice": tune.choice,
            "uniform": lambda v: tune.uniform(v[0], v[1]), "loguniform": lambda v: tune.loguniform(v[0], v[1])}
    return {key: make[dim.kind](dim.candidates()) for key, dim in space.items()}


def override(key: str, value: Any) -> str:
    """The ``key=value`` override that sets ``key`` to ``value`` (a trial's draw)."""
    return f"{key}={_yaml_scalar(value)}"
