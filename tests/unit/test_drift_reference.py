"""The training reference: builder, JSON round trip, score baseline; and the synthetic stays other drift tests use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vigil_scoring.reference import Reference, auroc, build_reference, expected_calibration_error


def synthetic_stays(n_stays: int = 300, seed: int = 0, hours: tuple[int, int] = (20, 60)) -> pd.DataFrame:
    """PhysioNet-format rows: a few vitals and labs with realistic missingness, demographics, a sepsis label."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n_stays):
        n = int(rng.integers(*hours))
        hr0 = rng.normal(85, 4)
        septic = rng.random() < 0.15
        onset = int(rng.integers(8, n)) if septic else None
        h = np.arange(n)
        frame = pd.DataFrame(
            {
                "patient_id": f"p{seed}{i:05d}",
                "hour": h,
                "HR": hr0 + rng.normal(0, 8, n),
                "O2Sat": np.clip(rng.normal(97, 2, n), 70, 100),
                "Temp": np.where(rng.random(n) < 0.35, rng.normal(37.0, 0.6, n), np.nan),
                "SBP": rng.normal(120, 18, n),
                "Lactate": np.where(rng.random(n) < 0.08, rng.lognormal(0.5, 0.4, n), np.nan),
                "Creatinine": np.where(rng.random(n) < 0.06, rng.lognormal(0.0, 0.5, n), np.nan),
                "EtCO2": np.nan,
                "Age": float(rng.integers(20, 90)),
                "Gender": float(rng.random() < 0.55),
                "Unit1": 1.0 if i % 2 else 0.0,
                "Unit2": 0.0 if i % 2 else 1.0,
                "SepsisLabel": ((h >= onset - 6) if onset is not None else np.zeros(n, bool)).astype(float),
            }
        )
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def test_reference_has_bins_missingness_and_sample() -> None:
    df = synthetic_stays(100)
    ref = build_reference(df)
    hr = ref.features["heart_rate"]
    assert hr.missing_rate == 0.0
    assert hr.measurements_per_stay_hour == 1.0
    assert len(hr.proportions) == len(hr.bin_edges) + 1
    assert abs(sum(hr.proportions) - 1.0) < 1e-9
    assert max(hr.proportions) < 0.2  # quantile bins hold about a tenth each
    assert len(hr.sample) == 1000 and hr.sample == sorted(hr.sample)
    temp = ref.features["temperature"]
    assert 0.6 < temp.missing_rate < 0.7
    assert ref.features["etco2"].n_values == 0 and ref.features["etco2"].missing_rate == 1.0
    assert not ref.features["etco2"].measured
    assert "glucose" not in ref.features  # columns absent from the file are not in the reference
    assert ref.n_stays == 100 and ref.n_rows == len(df)
    assert ref.scores is None


def test_reference_round_trips_json_and_file(tmp_path: Path) -> None:
    df = synthetic_stays(50)
    scores = np.clip(df["SepsisLabel"].to_numpy() * 0.3 + np.random.default_rng(1).random(len(df)) * 0.5, 0, 1)
    ref = build_reference(df, scores, threshold=0.5)
    again = Reference.from_json(ref.to_json())
    assert again == ref
    path = ref.save(tmp_path / "reference.json")
    assert Reference.load(path) == ref
    assert ref.scores is not None
    assert ref.scores.mean_score == pytest.approx(scores.mean())
    assert ref.scores.alert_rate == pytest.approx((scores >= 0.5).mean())
    assert ref.scores.auroc is not None and ref.scores.auroc > 0.7
    assert ref.scores.ece is not None and ref.scores.error_rate is not None


def test_reference_accepts_canonical_column_names() -> None:
    df = synthetic_stays(20).rename(columns={"HR": "heart_rate"})
    assert build_reference(df).features["heart_rate"].n_values == len(df)


def test_scores_must_match_rows() -> None:
    with pytest.raises(ValueError, match="scores"):
        build_reference(synthetic_stays(5), np.zeros(3))


def test_unknown_format_is_refused() -> None:
    ref = build_reference(synthetic_stays(5))
    with pytest.raises(ValueError, match="format"):
        Reference.from_json(ref.to_json().replace('"format":1', '"format":99'))


def test_auroc_is_exact_with_ties_and_ece_is_zero_when_calibrated() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.4, 0.4, 0.8, 0.2, 0.9])
    # pairs (pos, neg): 9; wins: 0.4 vs (0.1, 0.2) 2 + tie with 0.4 half; 0.8: 3; 0.9: 3 -> 8.5 / 9
    assert auroc(y, p) == pytest.approx(8.5 / 9)
    assert auroc(np.ones(3), np.array([0.1, 0.2, 0.3])) is None
    rng = np.random.default_rng(0)
    probs = rng.random(200000)
    labels = rng.random(200000) < probs
    ece = expected_calibration_error(labels, probs)
    assert ece is not None and ece < 0.01
    assert expected_calibration_error(labels, np.clip(probs + 0.3, 0, 1)) > 0.2  # type: ignore[operator]
