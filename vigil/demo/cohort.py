"""The demo's cohort: which stays stream while the candidate is in shadow, and which after the decision."""

from __future__ import annotations

import math
from collections import defaultdict

import pandas as pd

from vigil import simulate as sim


def shadow_split(plan: list[sim.Stay], share: float) -> tuple[list[sim.Stay], list[sim.Stay]]:
    """The stays streamed in shadow and the rest, stratified by sex and sepsis (each keeps the plan's order).

    Each (sex, septic) stratum gives ``round(share * n)`` of its stays to the shadow phase, so the policy's
    per-group evidence does not depend on the luck of one draw; a non-empty rest is kept when there is one.
    """
    strata: dict[tuple[str, bool], list[sim.Stay]] = defaultdict(list)
    for stay in plan:
        gender = stay.rows["Gender"].dropna() if "Gender" in stay.rows else pd.Series(dtype=float)
        sex = "unknown" if gender.empty else ("male" if float(gender.iloc[0]) == 1.0 else "female")
        strata[(sex, stay.onset_hour is not None)].append(stay)
    chosen: set[str] = set()
    for stays in strata.values():
        chosen.update(s.encounter for s in stays[: math.floor(share * len(stays) + 0.5)])
    if len(chosen) == len(plan) and share < 1 and len(plan) > 1:
        chosen.discard(plan[-1].encounter)
    return [s for s in plan if s.encounter in chosen], [s for s in plan if s.encounter not in chosen]
