"""The default model's recorded validation: it beats the baseline and every bedside score, and it holds on the
bundled (held-out) sample."""

from __future__ import annotations

import pytest

from vigil_ml.data import SAMPLE_PATH, load
from vigil_ml.evaluate import evaluate_package
from vigil_scoring.model_package import ModelPackage, default_package_path

COMPARATORS = ("logistic_regression", "qsofa", "sirs", "news2", "mews")


@pytest.mark.parametrize("version", ["1", "2", "3", "4"])
def test_card_model_beats_baseline_and_bedside_scores(version: str) -> None:
    card = ModelPackage.load(default_package_path(version)).card
    scores = card["metrics"]["scores"]
    assert card["metrics"]["split"] == "test"
    for metric in ("auroc", "utility"):
        model = scores["model"][metric]["value"]
        for other in COMPARATORS:
            assert model > scores[other][metric]["value"], (metric, other)
    # The margin over the best bedside score is beyond sampling noise.
    best_bedside = max(scores[c]["auroc"]["ci"][1] for c in ("qsofa", "sirs", "news2", "mews"))
    assert scores["model"]["auroc"]["ci"][0] > best_bedside


def test_sample_is_held_out_and_model_beats_bedside_scores_on_it() -> None:
    pkg = ModelPackage.load(default_package_path())
    assert "never saw them" in pkg.card["training_data"]["held_out_sample"]
    assert pkg.card["training_data"]["held_out_sample"].startswith("300 stays")
    report, _ = evaluate_package(pkg, load(SAMPLE_PATH), n_boot=20)
    s = report["scores"]
    for other in ("qsofa", "sirs", "news2", "mews"):
        assert s["model"]["auroc"]["value"] > s[other]["auroc"]["value"]
        assert s["model"]["utility"]["value"] > s[other]["utility"]["value"]
