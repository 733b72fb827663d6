"""Bedside scores computed from the same PhysioNet rows as the model, for comparison.

All four use the last value carried forward within the stay (as a nurse's chart would show it) and count a
component as normal when it was never measured. Approximations forced by the data, stated where they apply:

- qSOFA: respiratory rate >= 22/min, systolic BP <= 100 mmHg; altered mentation is not recorded (scores 0), so
  the maximum is 2.
- SIRS: temperature > 38 or < 36 C, heart rate > 90/min, respiratory rate > 20/min or PaCO2 < 32 mmHg,
  WBC > 12 or < 4 x10^3/uL (band forms are not recorded).
- NEWS2: respiratory rate, SpO2 (scale 1), supplemental oxygen (FiO2 > 0.21 recorded), systolic BP, heart rate,
  temperature; consciousness (ACVPU) is not recorded (scores 0).
- MEWS: systolic BP, heart rate, respiratory rate, temperature; AVPU is not recorded (scores 0).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CLINICAL_SCORES: tuple[str, ...] = ("qsofa", "sirs", "news2", "mews")
STANDARD_CUTOFFS: dict[str, float] = {"qsofa": 2, "sirs": 2, "news2": 5, "mews": 5}
"""Usual alerting cut-offs (score >= cut-off), used when no validation split chose one."""


def _locf(df: pd.DataFrame, col: str) -> np.ndarray:
    if col not in df:
        return np.full(len(df), np.nan)
    return df.groupby("patient_id", sort=False)[col].ffill().to_numpy(dtype=np.float64)


def _band(x: np.ndarray, edges: list[tuple[float, float, int]]) -> np.ndarray:
    """Points for the first (low, high, points) band with low <= x < high; 0 when x is NaN or in no band."""
    pts = np.zeros(len(x))
    done = np.isnan(x)
    for lo, hi, p in edges:
        hit = ~done & (x >= lo) & (x < hi)
        pts[hit] = p
        done |= hit
    return pts


def clinical_scores(df: pd.DataFrame) -> pd.DataFrame:
    """qSOFA, SIRS, NEWS2 and MEWS per row (rows grouped by stay in time order), same index as ``df``."""
    rr, sbp, hr = _locf(df, "Resp"), _locf(df, "SBP"), _locf(df, "HR")
    temp, spo2, fio2 = _locf(df, "Temp"), _locf(df, "O2Sat"), _locf(df, "FiO2")
    wbc, paco2 = _locf(df, "WBC"), _locf(df, "PaCO2")
    with np.errstate(invalid="ignore"):
        qsofa = (rr >= 22).astype(float) + (sbp <= 100)
        sirs = (
            ((temp > 38) | (temp < 36)).astype(float)
            + (hr > 90)
            + ((rr > 20) | (paco2 < 32))
            + ((wbc > 12) | (wbc < 4))
        )
        inf = np.inf
        news2 = (
            _band(rr, [(-inf, 9, 3), (9, 12, 1), (12, 21, 0), (21, 25, 2), (25, inf, 3)])
            + _band(spo2, [(-inf, 92, 3), (92, 94, 2), (94, 96, 1)])
            + np.where(fio2 > 0.21, 2, 0)
            + _band(sbp, [(-inf, 91, 3), (91, 101, 2), (101, 111, 1), (111, 220, 0), (220, inf, 3)])
            + _band(hr, [(-inf, 41, 3), (41, 51, 1), (51, 91, 0), (91, 111, 1), (111, 131, 2), (131, inf, 3)])
            + _band(temp, [(-inf, 35.05, 3), (35.05, 36.05, 1), (36.05, 38.05, 0), (38.05, 39.05, 1), (39.05, inf, 2)])
        )
        mews = (
            _band(sbp, [(-inf, 71, 3), (71, 81, 2), (81, 101, 1), (101, 200, 0), (200, inf, 2)])
            + _band(hr, [(-inf, 41, 2), (41, 51, 1), (51, 101, 0), (101, 111, 1), (111, 130, 2), (130, inf, 3)])
            + _band(rr, [(-inf, 9, 2), (9, 15, 0), (15, 21, 1), (21, 30, 2), (30, inf, 3)])
            + _band(temp, [(-inf, 35, 2), (35, 38.5, 0), (38.5, inf, 2)])
        )
    return pd.DataFrame({"qsofa": qsofa, "sirs": sirs, "news2": news2, "mews": mews}, index=df.index)
