"""The model card for people: card.json rendered as Markdown."""

from __future__ import annotations

from typing import Any

CITATION = (
    "Reyna MA, Josef CS, Jeter R, Shashikumar SP, Westover MB, Nemati S, Clifford GD, Sharma A. Early Prediction of "
    "Sepsis From Clinical Data: The PhysioNet/Computing in Cardiology Challenge 2019. Critical Care Medicine "
    "48(2):210-217 (2020). doi:10.1097/CCM.0000000000004145. Dataset: doi:10.13026/v64v-d857. PhysioNet: "
    "Goldberger A, et al. Circulation 101(23):e215-e220 (2000)."
)

_ROWS = (
    ("auroc", "AUROC", "{:.3f}"),
    ("auprc", "AUPRC", "{:.3f}"),
    ("utility", "Normalised utility", "{:.3f}"),
    ("sensitivity", "Sensitivity (hourly)", "{:.3f}"),
    ("specificity", "Specificity (hourly)", "{:.3f}"),
    ("ppv", "PPV (hourly)", "{:.3f}"),
    ("stay_detection_rate", "Septic stays alerted by onset", "{:.3f}"),
    ("alerts_per_100_patient_days", "New alerts / 100 patient-days", "{:.1f}"),
    ("median_lead_time_hours", "Median lead time (h)", "{:.1f}"),
    ("ece", "ECE", "{:.4f}"),
    ("calibration_slope", "Calibration slope", "{:.2f}"),
    ("calibration_intercept", "Calibration intercept", "{:.2f}"),
)
_NAMES = {
    "model": "Model",
    "logistic_regression": "Logistic regr.",
    "qsofa": "qSOFA",
    "sirs": "SIRS",
    "news2": "NEWS2",
    "mews": "MEWS",
}


def fmt_metric(m: Any, fmt: str) -> str:
    """``value (lo-hi)`` or ``-``."""
    if not isinstance(m, dict) or m.get("value") is None or m["value"] != m["value"]:
        return "-"
    s = fmt.format(m["value"])
    if m.get("ci"):
        s += f" ({fmt.format(m['ci'][0])}-{fmt.format(m['ci'][1])})"
    return s


def card_markdown(card: dict[str, Any]) -> str:
    """Readable Markdown of a card.json."""
    scores = card["metrics"]["scores"]
    names = list(scores)
    lines = [
        f"# Model card: {card['name']} version {card['version']}",
        "",
        f"{card['model_type']}; feature set `{card['feature_set_version']}` ({len(card['features'])} features); "
        f"model sha256 `{card['sha256']}`; created {card['created_at']}.",
        *(
            [
                "",
                f"Masked feature groups: {', '.join(card['features_masked']['groups'])} "
                f"({len(card['features_masked']['columns'])} columns). {card['features_masked']['why']}",
            ]
            if card.get("features_masked")
            else []
        ),
        "",
        "## Intended use",
        "",
        card["intended_use"],
        "",
        "Out of scope: " + " ".join(card["out_of_scope"]),
        "",
        "## Training data",
        "",
        f"{card['training_data']['source']}. Split {card['training_data']['split_rule']}.",
        "",
        "| part | stays | septic stays | hours |",
        "|---|---|---|---|",
        *(
            f"| {k} | {v['stays']} | {v['septic_stays']} | {v['rows']} |"
            for k, v in card["training_data"]["split"].items()
        ),
        "",
        card["training_data"]["held_out_sample"],
        "",
        f"Target: {card['training_data']['target']}. Data sha256 `{card['training_data']['sha256']}`.",
        "",
        f"Citation (required with the data or any model trained on it): {card['training_data']['citation']}",
        f"Licence: {card['training_data']['licence']}.",
        "",
        "## Operating threshold",
        "",
        f"Alert at risk >= **{card['operating_threshold']['value']:.4g}**. {card['operating_threshold']['rule']}",
        f"Risk levels: {', '.join(f'{k}: {v}' for k, v in card['operating_threshold']['risk_levels'].items())} "
        f"(thresholds {card['operating_threshold']['thresholds']}).",
        "",
        f"## Metrics on the held-out test split ({card['metrics']['bootstrap']}, 95% CIs)",
        "",
        "Bedside scores alert at their own utility-optimal threshold chosen on the same validation split.",
        "",
        "| metric | " + " | ".join(_NAMES.get(n, n) for n in names) + " |",
        "|---|" + "---|" * len(names),
        "| threshold | " + " | ".join(f"{scores[n]['threshold']:.4g}" for n in names) + " |",
        *(
            f"| {label} | " + " | ".join(fmt_metric(scores[n].get(key), fmt) for n in names) + " |"
            for key, label, fmt in _ROWS
        ),
        "",
        "## Calibration",
        "",
        f"ECE {fmt_metric(card['calibration']['ece'], '{:.4f}')}, slope "
        f"{fmt_metric(card['calibration']['slope'], '{:.2f}')}, intercept "
        f"{fmt_metric(card['calibration']['intercept'], '{:.2f}')} (logistic recalibration of the hourly label on "
        "logit risk; slope < 1 means overconfident extremes).",
        "",
        "| mean predicted | observed | hours |",
        "|---|---|---|",
        *(
            f"| {p:.4f} | {o:.4f} | {n} |"
            for p, o, n in zip(
                card["calibration"]["curve"]["mean_predicted"],
                card["calibration"]["curve"]["observed"],
                card["calibration"]["curve"]["count"],
                strict=True,
            )
        ),
        "",
        "## Subgroups (test split; ratio to the whole test cohort in brackets)",
        "",
        "| attribute | group | stays | septic | AUROC | utility | sensitivity | specificity | PPV |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in card["subgroups"]:
        cells = []
        for k in ("auroc", "utility", "sensitivity", "specificity", "ppv"):
            v, ratio = r.get(k), r.get(f"{k}_ratio")
            cells.append("-" if v is None or v != v else f"{v:.3f}" + ("" if ratio is None else f" (x{ratio:.2f})"))
        lines.append(
            f"| {r['attribute']} | {r['group']} | {r['stays']} | {r['septic_stays']} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "## Packaging",
        "",
        f"ONNX ({card['onnx']['input']}, opset {card['onnx']['opset']}); parity with scikit-learn on "
        f"{card['onnx']['rows_checked']} held-out hours: max abs difference {card['onnx']['parity_max_abs_diff']:.2e} "
        f"(tolerance {card['onnx']['tolerance']}).",
        "",
        "## Design choices",
        "",
        *(f"- {x}" for x in card["design_choices"]),
        "",
        "## Limitations",
        "",
        *(f"- {x}" for x in card["limitations"]),
        "",
        "## Ethical considerations",
        "",
        card["ethical_considerations"],
        "",
        "## Features",
        "",
        ", ".join(f"`{f}`" for f in card["features"]),
        "",
    ]
    return "\n".join(lines)
