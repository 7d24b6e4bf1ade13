"""Synthetic data: sizes, determinism, and a planted signal that the truth mask explains."""

from __future__ import annotations

import numpy as np
import pytest

from margo_dist.data.dataset import TEST, TRAIN, VALID
from margo_dist.data.synth import SynthSpec, generate, load_truth, make_synthetic, write_synthetic
from margo_dist.errors import MargoError


def test_sizes_splits_and_truth():
    ds, truth = make_synthetic(300, 200, 3000, {"image": 32, "text": 16}, seed=3, unreliable_frac=0.25)
    assert ds.user.size == 3000 and ds.n_users == 300 and ds.n_items == 200
    assert ds.features["image"].shape == (200, 32) and ds.features["text"].shape == (200, 16)
    keys = ds.user * ds.n_items + ds.item
    assert np.unique(keys).size == keys.size, "no duplicate (user, item) pairs"
    for split in (TRAIN, VALID, TEST):
        assert np.unique(ds.user[ds.label == split]).size == 300, "every user in every split"
    assert truth.shape == (200, 2)
    assert truth.sum() == 50 and truth.sum(axis=1).max() == 1, "25% of items, one modality each"


def test_seed_determinism():
    a, ta = make_synthetic(100, 80, 1000, {"x": 8}, seed=1)
    b, tb = make_synthetic(100, 80, 1000, {"x": 8}, seed=1)
    c, _ = make_synthetic(100, 80, 1000, {"x": 8}, seed=2)
    assert np.array_equal(a.item, b.item) and np.array_equal(a.label, b.label)
    assert np.array_equal(a.features["x"], b.features["x"]) and np.array_equal(ta, tb)
    assert not np.array_equal(a.item, c.item)


@pytest.mark.parametrize("kind", ["swap", "gaussian"])
def test_unreliable_modality_disagrees_with_the_other(kind):
    """Clean items' two views share the latent, so a linear map fits them; noisy ones do not."""
    ds, truth = make_synthetic(200, 600, 2400, {"image": 24, "text": 24}, seed=0, unreliable_frac=0.3,
                               feature_noise=0.1, noise_kind=kind)
    img, txt = ds.features["image"], ds.features["text"]
    clean = ~truth.any(axis=1)
    coef, *_ = np.linalg.lstsq(img[clean], txt[clean], rcond=None)
    resid = ((img @ coef - txt) ** 2).sum(axis=1) / (txt ** 2).sum(axis=1)
    assert resid[clean].mean() < 0.1
    assert resid[truth.any(axis=1)].mean() > 1.0


def test_gaussian_noise_has_the_clean_norm_but_no_item_subspace():
    ds, truth = make_synthetic(200, 600, 2400, {"image": 48, "text": 24}, seed=1, noise_kind="gaussian",
                               feature_noise=0.1)
    img, bad = ds.features["image"], truth[:, 0]
    norms = np.linalg.norm(img, axis=1)
    assert abs(norms[bad].mean() / norms[~bad].mean() - 1) < 0.1
    # clean views live in the 16-d latent subspace (plus a little noise); Gaussian rows fill all 48 dims
    _, _, vt = np.linalg.svd(img[~bad], full_matrices=False)
    basis = vt[:16]
    inside = lambda x: (np.linalg.norm(x @ basis.T, axis=1) / np.linalg.norm(x, axis=1)).mean()
    assert inside(img[~bad]) > 0.95 and inside(img[bad]) < 0.7
    swap, truth_s = make_synthetic(200, 600, 2400, {"image": 48, "text": 24}, seed=1, feature_noise=0.1)
    assert inside(swap.features["image"][truth_s[:, 0]]) > 0.95


def test_written_with_truth(tmp_path):
    spec = SynthSpec(n_users=50, n_items=40, n_interactions=400, modality_dims={"image": 4, "text": 3}, seed=5)
    ds = write_synthetic(spec, str(tmp_path / "syn"), "parquet")
    names, truth = load_truth(str(tmp_path / "syn"))
    assert names == ["image", "text"]
    assert np.array_equal(truth, generate(spec)[1])
    assert ds.user.size == 400


def test_bad_spec_is_rejected():
    with pytest.raises(MargoError, match="below 3 per user"):
        make_synthetic(100, 50, 200, {"x": 4})
    with pytest.raises(MargoError, match="noise_kind='pink' is not one of swap, gaussian"):
        make_synthetic(100, 50, 400, {"x": 4}, noise_kind="pink")
    with pytest.raises(MargoError, match="unreliable_frac=1.5"):
        make_synthetic(10, 50, 100, {"x": 4}, unreliable_frac=1.5)


def test_missing_frac_removes_one_modality_of_some_items_and_changes_nothing_else(tmp_path) -> None:
    import dataclasses

    from margo_dist.data.formats import read_dataset

    spec = SynthSpec(n_users=60, n_items=50, n_interactions=600, modality_dims={"image": 6, "text": 4}, seed=3)
    whole, _ = generate(spec)
    gappy, _ = generate(dataclasses.replace(spec, missing_frac=0.2))
    missing = {m: ~gappy.presence(m) for m in ("image", "text")}
    assert int(missing["image"].sum() + missing["text"].sum()) == 10  # 20% of the items, one modality each
    assert not (missing["image"] & missing["text"]).any()
    for m in ("image", "text"):
        assert not gappy.features[m][missing[m]].any()
        np.testing.assert_array_equal(gappy.features[m][~missing[m]], whole.features[m][~missing[m]])
    np.testing.assert_array_equal(gappy.item, whole.item)
    write_synthetic(dataclasses.replace(spec, missing_frac=0.2), str(tmp_path / "d"), "mmrec")
    back = read_dataset(str(tmp_path / "d"))
    np.testing.assert_array_equal(back.presence("image"), gappy.presence("image"))
    with pytest.raises(MargoError, match="missing_frac=0.2 needs two modalities"):
        generate(SynthSpec(n_users=60, n_items=50, n_interactions=600, modality_dims={"text": 4},
                           missing_frac=0.2))
