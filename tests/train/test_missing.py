"""Items without a modality (data.missing): masked out of fusion, L_cal, projection and kNN."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from margo_dist.config import ModelConfig, load_config
from margo_dist.data.synth import SynthSpec, write_synthetic
from margo_dist.graph.build import present_knn
from margo_dist.model import losses
from margo_dist.model.layers import MLP
from margo_dist.model.margo import build_model
from margo_dist.train.entry import train
from margo_dist.train.loop import Trainer, load_training_data

TINY = SynthSpec(n_users=120, n_items=80, n_interactions=1200, modality_dims={"image": 12, "text": 8}, seed=0)
NO_IMAGE = np.arange(0, 80, 7)  # items 0, 7, ..., 77 have no image
NO_TEXT = np.array([3, 40])


@pytest.fixture(scope="module")
def gappy(tmp_path_factory) -> str:
    """The tiny dataset with some items' image or text removed: zero rows and <modality>_present.npy."""
    path = tmp_path_factory.mktemp("gappy") / "data"
    write_synthetic(TINY, str(path), "mmrec")
    for mod, gone in (("image", NO_IMAGE), ("text", NO_TEXT)):
        feat = np.load(path / f"{mod}_feat.npy")
        feat[gone] = 0.0
        np.save(path / f"{mod}_feat.npy", feat)
        present = np.ones(80, dtype=bool)
        present[gone] = False
        np.save(path / f"{mod}_present.npy", present)
    return str(path)


def cfg_for(data: str, run: str, *extra: str):
    return load_config("configs/default.yaml", [
        f"data.path={data}", f"run.dir={run}", "train.max_epochs=2", "train.batch_size=256", "train.progress=false",
        "model.dim=8", "graph.user_k=5", "graph.item_k=3", "run.plots=false", *extra])


def test_reliability_and_calibration_leave_out_missing_modalities() -> None:
    r_pos, r_neg = torch.tensor([[1.0, 2.0], [0.5, 0.0]]), torch.zeros(2, 2)
    present = torch.tensor([[True, False], [True, True]])
    z, mask = losses.reliability(r_pos, r_neg, present)
    # row 0: only modality 0 is there -> z = [1, 0]; row 1: softmax(0.5, 0)
    torch.testing.assert_close(z, torch.tensor([[1.0, 0.0], [float(1 / (1 + np.exp(-0.5))), float(1 / (1 + np.exp(0.5)))]]))
    assert mask.tolist() == [True, True]
    w = torch.tensor([[0.6, 0.4], [0.5, 0.5]])
    gamma = torch.ones(2)
    cal = losses.calibration_loss(z, mask, gamma, w, w, present=present)
    # row 0: q over modality 0 alone is 1 -> KL(z || q) = 0; row 1: KL(z || [0.5, 0.5])
    z1 = z[1]
    expected = float((z1 * torch.log(z1 / 0.5)).sum()) / 2
    assert float(cal) == pytest.approx(expected, rel=1e-6)
    assert float(losses.calibration_loss(z, mask, gamma, w, w)) > float(cal)  # row 0 counted without the mask


def test_the_model_masks_missing_pairs() -> None:
    present = torch.ones(5, 2, dtype=torch.bool)
    present[1, 0] = present[3, 1] = False
    model = build_model(4, 5, [6, 3], ModelConfig(dim=4, hidden_mult=2, theta_init_std=0.5), seed=0,
                        present=present)
    w = model.item_weights()
    assert w[1, 0] == 0.0 and w[3, 1] == 0.0 and w[1, 1] == 1.0 and w[3, 0] == 1.0
    assert (w[present] > 0).all()
    _, gate = model.fusion_coefficients("pretrain", None, torch.tensor([1, 2]))
    assert gate.tolist() == [[0.0, 1.0], [1.0, 1.0]]
    mlp = MLP(3, 4, 2, torch.Generator().manual_seed(0), missing_rows=True)
    out = mlp(torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    assert torch.equal(out[0], torch.zeros(2)) and bool(out[1].abs().sum() > 0)


def test_knn_links_only_items_that_have_the_modality() -> None:
    feat = np.random.default_rng(0).standard_normal((12, 4)).astype(np.float32)
    present = np.ones(12, dtype=bool)
    present[[2, 5]] = False
    feat[[2, 5]] = 0.0
    idx, sim = present_knn(feat, present, 3)
    assert (idx[[2, 5]] == -1).all() and not np.isin(idx, [2, 5]).any()
    assert (idx[present] >= 0).all() and idx.shape == (12, 3)


def test_after_training_a_missing_pair_weighs_exactly_zero(gappy, tmp_path) -> None:
    summary = train(cfg_for(gappy, str(tmp_path / "mask")), log=lambda _m: None)
    assert summary["test"]["recall@20"] > 0.0
    weights = pq.read_table(str(tmp_path / "mask" / "item_weights.parquet")).to_pydict()
    image, text = np.array(weights["image"]), np.array(weights["text"])
    assert (image[NO_IMAGE] == 0.0).all() and (text[NO_TEXT] == 0.0).all()
    assert (text[NO_IMAGE] == 1.0).all() and (image[NO_TEXT] == 1.0).all()
    rest = np.setdiff1d(np.arange(80), np.concatenate([NO_IMAGE, NO_TEXT]))
    assert (image[rest] > 0).all() and (text[rest] > 0).all()


def test_the_comparison_modes_mask_nothing(gappy, tmp_path) -> None:
    cfg = cfg_for(gappy, str(tmp_path / "zero"), "data.missing=zero")
    data = load_training_data(cfg)
    assert data.present is None and not data.features[0][NO_IMAGE].any()
    masked = load_training_data(cfg_for(gappy, str(tmp_path / "mask")))
    # the zero rows get kNN lists of their own (and are in others'); masked, they have none in that modality
    assert data.graph.item_item.src.numel() > masked.graph.item_item.src.numel()


def test_mean_fill_is_mmrecs_and_masks_nothing(gappy, tmp_path) -> None:
    cfg = cfg_for(gappy, str(tmp_path / "mean"), "data.missing=mean")
    data = load_training_data(cfg)
    assert data.present is None
    image = data.features[0].numpy()
    np.testing.assert_allclose(image[NO_IMAGE[0]], image[np.setdiff1d(np.arange(80), NO_IMAGE)].mean(0), rtol=1e-5)
    trainer = Trainer(cfg, data, log=lambda _m: None)
    assert trainer.model.present is None
    masked = Trainer(cfg_for(gappy, str(tmp_path / "m2")), load_training_data(cfg_for(gappy, str(tmp_path / "m2"))),
                     log=lambda _m: None)
    assert masked.model.present.shape == (80, 2) and int((~masked.model.present).sum()) == len(NO_IMAGE) + 2


def test_a_worker_reads_the_presence_without_the_features(gappy, tmp_path) -> None:
    from margo_dist.data.formats import read_interactions

    cfg = cfg_for(gappy, str(tmp_path / "w"))
    ds = read_interactions(cfg.data, 120, 80)
    assert not ds.features and set(ds.present) == {"image", "text"}
    assert np.flatnonzero(~ds.present["image"]).tolist() == NO_IMAGE.tolist()


def test_sampled_mode_masks_the_same_pairs(gappy, tmp_path) -> None:
    train(cfg_for(gappy, str(tmp_path / "s"), "train.mode=sampled", "sampler.num_workers=0"), log=lambda _m: None)
    image = np.array(pq.read_table(str(tmp_path / "s" / "item_weights.parquet")).column("image"))
    assert (image[NO_IMAGE] == 0.0).all() and (np.delete(image, NO_IMAGE) > 0).all()


def test_weight_auc_scores_the_present_pairs_in_every_mode(gappy, tmp_path) -> None:
    from margo_dist.train.metrics import weight_detection_auc

    cfg = cfg_for(gappy, str(tmp_path / "auc"), "data.missing=mean", "model.theta_init_std=0.5")
    trainer = Trainer(cfg, load_training_data(cfg), log=lambda _m: None)
    present = torch.ones(80, 2, dtype=torch.bool)
    present[NO_IMAGE, 0] = present[NO_TEXT, 1] = False
    weights, truth = trainer.model.item_weights().detach(), torch.from_numpy(trainer.data.truth)
    assert trainer.weight_auc() == weight_detection_auc(weights, truth, present)
    assert trainer.weight_auc() != weight_detection_auc(weights, truth)
