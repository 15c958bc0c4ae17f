"""Importance scores: one value per channel (atom) of each group; higher means keep.

A scorer is a plain callable ``(analysis, group, data) -> members`` returning a matrix
``[n_members, group.size]`` (NaN where a member does not reach a channel);
:func:`score_groups` normalises each member, reduces over members (``REDUCE``) and normalises
across groups (``NORMALIZE``). Later criteria (gradients, activations) are new entries in
``SCORERS`` and never touch the planner or the rewrite.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..analysis import Analysis, Group
from ..errors import PlanError
from . import activation, gradient, magnitude, obs
from .reduce import NORMALIZE, REDUCE

__all__ = ["SCORERS", "REDUCE", "NORMALIZE", "Scores", "ScoreData", "score_groups", "NEEDS", "ABSOLUTE"]

Scorer = Callable[[Analysis, Group, "ScoreData"], np.ndarray]


@dataclass
class ScoreData:
    """What data-driven scorers read: a ``record.Recording`` (activations), gradients..."""

    activations: object = None
    gradients: object = None
    hybrid_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # magnitude, gradient, activation
    calibration: object = None  # a calib.Calibration, for criteria that record more (obs: Grams)
    cache: dict = field(default_factory=dict)  # per-analysis results of criteria scoring all groups at once


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
    "obs": obs.obs,
}
NEEDS = {"obs": "activations", "activation": "activations", "apoz": "activations", "wanda": "activations", "taylor": "gradients",
         "fisher": "gradients", "grad": "gradients"}
FALLBACK = {"obs": "wanda", "bn": "l2", "activation": "l2", "apoz": "l2", "wanda": "l2", "taylor": "l2", "fisher": "l2", "grad": "l2"}
CRITERIA = (*SCORERS, "random")
# criteria whose scores are already comparable across groups (error per FLOP): no per-member or
# per-group normalisation; a group that falls back is scaled to their groups' median
ABSOLUTE = frozenset({"obs"})


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
    if criterion in ABSOLUTE and getattr(data, "calibration", None) is None:
        from ..options import OptionError

        raise OptionError(f"criterion '{criterion}' needs calibration data: give {{calib}}")
    data = data or ScoreData()
    absolute = criterion in ABSOLUTE
    fell_back: list[int] = []
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
            fell_back.append(g.id)
        if members.shape[0] == 0 or not np.isfinite(members).any():
            out[g.id] = np.ones(g.size)
            out.notes[g.id] = f"no weights to score with {used}; all channels tie"
            continue
        if absolute and used == criterion:
            s = REDUCE["sum"](members)
            out[g.id] = np.where(np.isfinite(s), s, 0.0)
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.nanmean(np.where(np.isfinite(members), members, np.nan), axis=1, keepdims=True)
            members = np.where(means > 0, members / means, members)
        s = REDUCE[reduce](members)
        s = np.where(np.isfinite(s), s, 0.0)
        out[g.id] = NORMALIZE[normalize](s)
    if absolute and fell_back:
        _rescale(out, fell_back)
    return out


def _rescale(out: Scores, fell_back: list[int]) -> None:
    """Fallback groups' mean-normalised scores onto the absolute groups' scale (their median)."""
    own = [float(np.median(s[s > 0])) for gid, s in out.items() if gid not in fell_back and (s > 0).any()]
    if not own:
        return
    scale = float(np.median(own))
    for gid in fell_back:
        s = out[gid]
        m = float(np.mean(s[np.isfinite(s)])) if np.isfinite(s).any() else 0.0
        out[gid] = s / m * scale if m > 0 else s
        out.notes[gid] += " (scaled to the median of the groups scored with obs)"
