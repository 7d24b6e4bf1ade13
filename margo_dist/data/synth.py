"""Synthetic multimodal data with planted unreliable (item, modality) pairs.

Users and items have latent tastes ``u, v ~ N(0, I_r)``. A user picks items by
``beta * <u, v> / sqrt(r) + log(popularity) + Gumbel`` (a softmax choice without
replacement among popularity-drawn candidates). Modality m of item i is a noisy
linear view of the item: ``f_i^m = v_i P^m + sigma * eps``. For ``unreliable_frac``
of the items one modality (chosen uniformly) is replaced, in one of two ways
(``noise_kind``):

- ``swap``: the view of an unrelated random latent vector (wrong content: another
  product's picture). Same distribution as a clean view.
- ``gaussian``: isotropic Gaussian noise at the clean features' scale (no content: a
  corrupt file). Same norm as a clean view, but it carries nothing of any item.

Neither can be told apart by its norm, only by disagreeing with the interactions.
The two stress different things: with ``swap`` BPR alone already learns which
modality to trust, with ``gaussian`` the calibration loss matters (docs/results.md, "Planted
unreliable modalities"). The truth mask is returned and written next to the data
(``unreliable.npy``: bool [n_items, M], columns in the order of ``synth.json``'s
``modalities``).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field

import numpy as np

from margo_dist.data.dataset import Dataset
from margo_dist.errors import MargoError

TRUTH_FILE = "unreliable.npy"
NOISE_KINDS = ("swap", "gaussian")
META_FILE = "synth.json"


@dataclass
class SynthSpec:
    """Parameters of a synthetic dataset (all of it is reproducible from these)."""

    n_users: int = 3000
    n_items: int = 1500
    n_interactions: int = 36000
    modality_dims: dict[str, int] = field(default_factory=lambda: {"image": 256, "text": 128})
    seed: int = 0
    unreliable_frac: float = 0.3
    latent_dim: int = 16
    taste_strength: float = 4.0  # beta: how strongly latent taste drives choices
    feature_noise: float = 0.5  # sigma, relative to the unit-variance signal
    min_per_user: int = 5
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    noise_kind: str = "swap"  # how an unreliable modality is replaced: swap | gaussian
    # items that lose one modality (its row zero, recorded in <modality>_present.npy); drawn from
    # their own random stream, so the rest of a dataset is the same with or without them
    missing_frac: float = 0.0

    def check(self) -> None:
        if self.n_users < 1 or self.n_items < 2:
            raise MargoError(f"synthetic data needs >= 1 user and >= 2 items, got users={self.n_users} "
                             f"items={self.n_items}")
        if not self.modality_dims:
            raise MargoError("synthetic data needs at least one modality")
        for name, dim in self.modality_dims.items():
            if dim < 1:
                raise MargoError(f"modality {name!r} has dimension {dim}; it must be >= 1")
        if self.noise_kind not in NOISE_KINDS:
            raise MargoError(f"noise_kind={self.noise_kind!r} is not one of {', '.join(NOISE_KINDS)}")
        if not 0.0 <= self.unreliable_frac <= 1.0:
            raise MargoError(f"unreliable_frac={self.unreliable_frac} must be in [0, 1]")
        if not 0.0 <= self.missing_frac <= 1.0:
            raise MargoError(f"missing_frac={self.missing_frac} must be in [0, 1]")
        if self.missing_frac > 0 and len(self.modality_dims) < 2:
            raise MargoError(f"missing_frac={self.missing_frac} needs two modalities or more: an item must keep one")
        if self.n_interactions < self.n_users * 3:
            raise MargoError(f"n_interactions={self.n_interactions} is below 3 per user "
                             f"({self.n_users} users): every split needs an interaction per user")
        if self.n_interactions > self.n_users * (self.n_items // 2):
            raise MargoError(f"n_interactions={self.n_interactions} exceeds half of users x items")


def _per_user_counts(rng: np.random.Generator, spec: SynthSpec) -> np.ndarray:
    """Heavy-tailed interaction counts with a floor, summing exactly to n_interactions."""
    floor = min(spec.min_per_user, spec.n_interactions // spec.n_users)
    cap = max(floor, spec.n_items // 2)
    extra_total = spec.n_interactions - floor * spec.n_users
    raw = rng.lognormal(mean=0.0, sigma=1.0, size=spec.n_users)
    extra = np.floor(raw / raw.sum() * extra_total).astype(np.int64)
    counts = np.minimum(floor + extra, cap)
    short = spec.n_interactions - int(counts.sum())
    while short > 0:
        room = np.flatnonzero(counts < cap)
        pick = rng.choice(room, size=min(short, room.size), replace=False)
        counts[pick] += 1
        short = spec.n_interactions - int(counts.sum())
    return counts


def _choose_items(rng: np.random.Generator, users: np.ndarray, items: np.ndarray, log_pop: np.ndarray,
                  counts: np.ndarray, spec: SynthSpec, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per user, ``counts[u]`` distinct items by Gumbel-top-k over popularity-drawn candidates."""
    pop = np.exp(log_pop - log_pop.max())
    cdf = np.cumsum(pop / pop.sum())
    scale = spec.taste_strength / np.sqrt(spec.latent_dim)
    out_u, out_i = [], []
    for start in range(0, spec.n_users, block):
        stop = min(start + block, spec.n_users)
        need = counts[start:stop]
        n_cand = int(min(spec.n_items, max(64, 6 * need.max())))
        cand = np.searchsorted(cdf, rng.random((stop - start, n_cand)), side="right")
        cand = np.minimum(cand, spec.n_items - 1)
        score = np.einsum("br,bcr->bc", users[start:stop], items[cand]) * scale
        score += rng.gumbel(size=score.shape)
        # A popularity draw repeats items: keep each item once per user.
        order = np.argsort(cand, axis=1, kind="stable")
        cand = np.take_along_axis(cand, order, axis=1)
        score = np.take_along_axis(score, order, axis=1)
        dup = np.zeros_like(cand, dtype=bool)
        dup[:, 1:] = cand[:, 1:] == cand[:, :-1]
        score[dup] = -np.inf
        distinct = (~dup).sum(axis=1)
        if np.any(distinct < need):
            # Rare for tiny catalogues: top up from a uniform permutation.
            for row in np.flatnonzero(distinct < need):
                have = set(cand[row][~dup[row]].tolist())
                fill = [i for i in rng.permutation(spec.n_items) if i not in have][: need[row] - distinct[row]]
                slots = np.flatnonzero(dup[row])[: len(fill)]
                cand[row, slots] = fill
                score[row, slots] = -1e9
        rank = np.argsort(-score, axis=1, kind="stable")
        take = np.arange(n_cand)[None, :] < need[:, None]
        chosen = np.take_along_axis(cand, rank, axis=1)[take]
        out_u.append(np.repeat(np.arange(start, stop), need))
        out_i.append(chosen)
    return np.concatenate(out_u).astype(np.int64), np.concatenate(out_i).astype(np.int64)


def make_synthetic(n_users: int, n_items: int, n_interactions: int, modality_dims: dict[str, int],
                   seed: int = 0, unreliable_frac: float = 0.3, **kwargs: object) -> tuple[Dataset, np.ndarray]:
    """A dataset and its truth mask (bool [n_items, M], True = unreliable modality)."""
    spec = SynthSpec(n_users=n_users, n_items=n_items, n_interactions=n_interactions,
                     modality_dims=dict(modality_dims), seed=seed, unreliable_frac=unreliable_frac,
                     **kwargs)  # type: ignore[arg-type]
    return generate(spec)


def generate(spec: SynthSpec) -> tuple[Dataset, np.ndarray]:
    """Generate the dataset described by ``spec``."""
    from margo_dist.data.prepare import split_per_user

    spec.check()
    rng = np.random.default_rng(spec.seed)
    r = spec.latent_dim
    users = rng.standard_normal((spec.n_users, r)).astype(np.float32)
    items = rng.standard_normal((spec.n_items, r)).astype(np.float32)
    log_pop = rng.normal(0.0, 1.0, size=spec.n_items)
    counts = _per_user_counts(rng, spec)
    user, item = _choose_items(rng, users, items, log_pop, counts, spec)
    label = split_per_user(user, spec.split, spec.seed)

    names = list(spec.modality_dims)
    truth = np.zeros((spec.n_items, len(names)), dtype=bool)
    bad_items = rng.choice(spec.n_items, size=int(round(spec.unreliable_frac * spec.n_items)), replace=False)
    truth[bad_items, rng.integers(0, len(names), size=bad_items.size)] = True
    features = {}
    for m, name in enumerate(names):
        dim = spec.modality_dims[name]
        proj = (rng.standard_normal((r, dim)) / np.sqrt(r)).astype(np.float32)
        source = items.copy()
        bad = truth[:, m]
        if spec.noise_kind == "swap":
            source[bad] = rng.standard_normal((int(bad.sum()), r)).astype(np.float32)
        feat = source @ proj
        feat += spec.feature_noise * rng.standard_normal(feat.shape, dtype=np.float32)
        if spec.noise_kind == "gaussian":
            scale = float(feat[~bad].std()) if (~bad).any() else 1.0
            feat[bad] = scale * rng.standard_normal((int(bad.sum()), dim), dtype=np.float32)
        features[name] = feat
    present: dict[str, np.ndarray] = {}
    if spec.missing_frac > 0:
        gaps = np.random.default_rng([spec.seed, 1])
        gone = gaps.choice(spec.n_items, size=int(round(spec.missing_frac * spec.n_items)), replace=False)
        which = gaps.integers(0, len(names), size=gone.size)
        for m, name in enumerate(names):
            present[name] = np.ones(spec.n_items, dtype=bool)
            present[name][gone[which == m]] = False
            features[name][~present[name]] = 0.0
    ds = Dataset(name="synth", n_users=spec.n_users, n_items=spec.n_items, user=user, item=item,
                 label=label, features=features, source=f"synthetic(seed={spec.seed})", present=present)
    return ds, truth


def truth_files(spec: SynthSpec, truth: np.ndarray) -> dict[str, bytes]:
    """The ground-truth files written next to a synthetic dataset."""
    buf = io.BytesIO()
    np.save(buf, truth, allow_pickle=False)
    meta = {"modalities": list(spec.modality_dims), "spec": {**spec.__dict__, "split": list(spec.split)},
            "unreliable_pairs": int(truth.sum()),
            "missing_pairs": {"fraction_of_items": spec.missing_frac, "files": "<modality>_present.npy"}}
    return {TRUTH_FILE: buf.getvalue(), META_FILE: json.dumps(meta, indent=2).encode()}


def write_synthetic(spec: SynthSpec, out_url: str, fmt: str = "mmrec") -> Dataset:
    """Generate and write a dataset plus its ground truth; returns the dataset."""
    from margo_dist.data.formats import write_dataset

    ds, truth = generate(spec)
    write_dataset(ds, out_url, fmt, extra=truth_files(spec, truth))
    return ds


def load_truth(url: str) -> tuple[list[str], np.ndarray]:
    """(modality names, unreliable mask) saved next to a synthetic dataset."""
    from margo_dist.data import io as mio

    with mio.open_url(mio.join(url, META_FILE), "rt") as fh:
        meta = json.load(fh)
    return meta["modalities"], mio.load_npy(mio.join(url, TRUTH_FILE))


DEFAULT_SPEC = SynthSpec(n_users=2000, n_items=1000, n_interactions=24000)


def margo_home() -> str:
    """The project's working folder: ``$MARGO_DIST_HOME``, else ``~/.cache/margo-dist``."""
    return os.environ.get("MARGO_DIST_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "margo-dist")


def default_dataset_url() -> str:
    """Folder of the built-in default dataset (made on first use)."""
    return os.path.join(margo_home(), f"synth-default-s{DEFAULT_SPEC.seed}-u{DEFAULT_SPEC.n_users}"
                                      f"-i{DEFAULT_SPEC.n_items}")


def ensure_synthetic(spec: SynthSpec, url: str, progress: bool = True) -> str:
    """Write the dataset of ``spec`` to ``url`` unless it is already there; return ``url``."""
    from margo_dist.data import io as mio

    if not mio.exists(mio.join(url, META_FILE)):
        if progress:
            print(f"creating synthetic dataset {url} ...", flush=True)
        write_synthetic(spec, url, "mmrec")
    return url


def ensure_default_dataset(progress: bool = True) -> str:
    """Create the default synthetic dataset if it is not there; return its URL."""
    return ensure_synthetic(DEFAULT_SPEC, default_dataset_url(), progress)


def dataset_url(path: str, progress: bool = True) -> str:
    """The dataset a config names: ``data.path``, or the built-in synthetic one when it is empty."""
    return path or ensure_default_dataset(progress)
