"""Importance scores: one value per channel (atom) of each group; higher means keep.

A scorer is a plain callable ``(analysis, group, data) -> members`` returning a matrix
``[n_members, group.size]`` (NaN where a member does not reach a channel);
:func:`score_groups` normalises each member, reduces over members (``REDUCE``) and normalises
across groups (``NORMALIZE``). Later criteria (gradients, activations) are new entries in
``SCORERS`` and never touch the planner or the rewrite.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..analysis import Analysis, Group
from ..errors import PlanError
from . import activation, gradient, magnitude
from .reduce import NORMALIZE, REDUCE

__all__ = ["SCORERS", "REDUCE", "NORMALIZE", "Scores", "ScoreData", "score_groups", "NEEDS"]

Scorer = Callable[[Analysis, Group, "ScoreData"], np.ndarray]


@dataclass
class ScoreData:
    """What data-driven scorers read: a ``record.Recording`` (activations), gradients..."""

    activations: object = None
    gradients: object = None
    hybrid_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # magnitude, gradient, activation


SCORERS: dict[str, Scorer] = {
    "l1": magnitude.l1,
    "l2": magnitude.l2,
    "bn": magnitude.bn_scale,
    "activation": activation.activation,
    "apoz": activation.apoz,
    "wanda": activation.wanda,
    "taylor": gradient.taylor,
    "fisher": gradient.fisher,
    "grad": gradient.grad,
    "hybrid": gradient.hybrid,
}
NEEDS = {"activation": "activations", "apoz": "activations", "wanda": "activations", "taylor": "gradients",
         "fisher": "gradients", "grad": "gradients"}
FALLBACK = {"bn": "l2", "activation": "l2", "apoz": "l2", "wanda": "l2", "taylor": "l2", "fisher": "l2", "grad": "l2"}
CRITERIA = (*SCORERS, "random")


class Scores(dict):
    """group id -> normalised scores; ``notes`` says where a criterion fell back."""

    def __init__(self) -> None:
        super().__init__()
        self.notes: dict[int, str] = {}


def score_groups(an: Analysis, criterion: str = "l2", *, reduce: str = "mean", normalize: str = "mean",
                 seed: int = 0, data: ScoreData | None = None) -> Scores:
    """Score every prunable group's channels.

    Args:
        an: the analysis.
        criterion: a key of ``SCORERS`` or ``random``.
        reduce: how members combine (``mean``, ``sum``, ``max``).
        normalize: how scores are scaled to compare across groups (``mean``, ``max``, ``sum``,
            ``none``).
        seed: for ``random``.
        data: recorded activations/gradients for the data-driven criteria.

    Raises:
        PlanError: unknown criterion/reduction/normalisation, or missing data.
    """
    if criterion not in CRITERIA:
        raise PlanError(f"unknown criterion '{criterion}'; choose one of {', '.join(CRITERIA)}")
    if reduce not in REDUCE:
        raise PlanError(f"unknown reduction '{reduce}'; choose one of {', '.join(REDUCE)}")
    if normalize not in NORMALIZE:
        raise PlanError(f"unknown normalisation '{normalize}'; choose one of {', '.join(NORMALIZE)}")
    need = NEEDS.get(criterion)
    if need and (data is None or getattr(data, need) is None):
        from ..options import OptionError

        opt = {"activations": "calib", "gradients": "gradients"}[need]
        raise OptionError(f"criterion '{criterion}' needs recorded {need}: give {{{opt}}}")
    data = data or ScoreData()
    rng = np.random.default_rng(seed)
    out = Scores()
    for g in an.groups:
        if not g.prunable:
            continue
        if criterion == "random":
            out[g.id] = rng.random(g.size) + 1e-3
            continue
        used = criterion
        members = SCORERS[criterion](an, g, data)
        if not np.isfinite(members).any() and criterion in FALLBACK:
            used = FALLBACK[criterion]
            members = SCORERS[used](an, g, data)
            out.notes[g.id] = f"no {criterion} member in this group; scored with {used}"
        if members.shape[0] == 0 or not np.isfinite(members).any():
            out[g.id] = np.ones(g.size)
            out.notes[g.id] = f"no weights to score with {used}; all channels tie"
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.nanmean(np.where(np.isfinite(members), members, np.nan), axis=1, keepdims=True)
            members = np.where(means > 0, members / means, members)
        s = REDUCE[reduce](members)
        s = np.where(np.isfinite(s), s, 0.0)
        out[g.id] = NORMALIZE[normalize](s)
    return out
