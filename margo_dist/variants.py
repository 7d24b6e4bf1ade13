"""The variant registry: what each ``model.variant`` trains (docs/equations.md section 8).

Every place that depends on the variant reads its :class:`Variant` here instead of
testing names, so a variant fully determines what it changes: its stages, its
encoder (and so whether it reads item features), its fusion-weight tables and whether
its calibration stage adds ``L_cal``. No torch import: the config validates names
against this module.
"""

from __future__ import annotations

from dataclasses import dataclass

from margo_dist.errors import ConfigError

PRETRAIN, CALIBRATE, DRAGON = "pretrain", "calibrate", "dragon"


@dataclass(frozen=True)
class Variant:
    """One row of the variants table.

    ``stages`` run in order (stage 2 starts from stage 1's best state); ``encoder`` is
    ``dragon`` (multimodal, reads item features) or an ID-only ``lightgcn`` / ``bpr_mf``;
    ``item_weights`` is MARGO's θ (fusion in the calibration stage), ``user_weights``
    DRAGON's user-level weights; ``calibration`` adds ``alpha * L_cal`` in the calibration
    stage, with the stop-gradient on z and gamma when ``stop_gradient``.
    """

    name: str
    stages: tuple[str, ...]
    encoder: str
    item_weights: bool = False
    user_weights: bool = False
    calibration: bool = False
    stop_gradient: bool = True
    summary: str = ""

    @property
    def uses_features(self) -> bool:
        return self.encoder == "dragon"

    def ignored_settings(self, alpha: float) -> list[str]:
        """One line per configured value this variant ignores (logged as a warning).

        Only ``wo_cal`` has a calibration stage whose loss a key could contradict: its
        point is stage 2 without ``L_cal``, so a non-zero ``model.alpha`` is ignored
        rather than silently turning it into MARGO.
        """
        if CALIBRATE in self.stages and not self.calibration and alpha > 0:
            return [f"model.variant={self.name} trains its calibration stage without L_cal: "
                    f"model.alpha={alpha:g} is ignored"]
        return []


_ALL = (
    Variant("margo", (PRETRAIN, CALIBRATE), "dragon", item_weights=True, calibration=True,
            summary="pretraining with sum fusion, then θ-weighted fusion with L_cal"),
    Variant("wo_weight", (PRETRAIN,), "dragon", summary="stage 1 only: sum fusion, no θ"),
    Variant("wo_cal", (PRETRAIN, CALIBRATE), "dragon", item_weights=True,
            summary="stage 2 learns θ by BPR alone (no L_cal, whatever model.alpha says)"),
    Variant("wo_two_stage", (CALIBRATE,), "dragon", item_weights=True, calibration=True,
            summary="the stage-2 objective from the first epoch"),
    Variant("wo_nograd", (PRETRAIN, CALIBRATE), "dragon", item_weights=True, calibration=True,
            stop_gradient=False, summary="MARGO without the stop-gradient on z and gamma"),
    Variant("dragon", (DRAGON,), "dragon", user_weights=True,
            summary="DRAGON: user-level modality weights, BPR only, one stage"),
    Variant("lightgcn", (PRETRAIN,), "lightgcn", summary="ID-only LightGCN"),
    Variant("bpr_mf", (PRETRAIN,), "bpr_mf", summary="ID-only matrix factorisation"),
)
VARIANTS: dict[str, Variant] = {v.name: v for v in _ALL}


def get_variant(name: str) -> Variant:
    """The registered variant ``name``; a ConfigError lists the known ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ConfigError(f"model.variant={name!r} is not one of {list(VARIANTS)}") from None
