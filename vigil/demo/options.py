"""What one demo run works on, and how long each of its waits may last."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MODEL = "sepsis"


@dataclass(frozen=True)
class Deadlines:
    """How long the demo waits for each thing before it gives up, says what it was waiting for, and stops.

    Measured on the 2-core development machine: the stack is ready in 15-40 s, the scorer takes the registry's
    model within 5 s (it polls every 2 s), 40 stays stream and are scored in about a minute and 300 in about four.
    The bounds leave room for a loaded machine without letting a broken run hang.
    """

    stack_ready_s: float = 90.0
    scorer_model_s: float = 60.0
    stream_s: float = 600.0
    """Sending one phase's bundles (the simulator's own deadline)."""
    scored_s: float = 420.0
    """Every stay-hour of a phase scored, after its bundles were sent."""
    quiet_s: float = 20.0
    """No record on any topic for this long while waiting for scores: the stream is over."""
    shadow_join_s: float = 180.0
    comparison_publish_s: float = 120.0
    comparison_seen_s: float = 60.0
    eligibility_s: float = 60.0
    promotion_s: float = 30.0
    rollback_s: float = 60.0
    alert_recorded_s: float = 30.0


@dataclass
class DemoOptions:
    """What the demo runs on."""

    data: Path | None = None
    stays: int | None = 300
    """The whole bundled sample: its 45 septic stays (21 women, 24 men) are few, and the policy's disparity ratio
    needs at least 10 septic stays in each group during shadow (else it is undefined and the policy fails closed)."""
    septic_share: float | None = 0.15
    """When ``stays`` is fewer than the data holds: the share of septic stays in the draw (the bundled sample's 15%;
    None: a plain random draw). Another hospital's data (the Challenge's set B: 5.7% septic) would otherwise give a
    few-hundred-stay cohort too few septic stays per group for the policy, which then fails closed."""
    shadow_share: float = 2 / 3
    """Share of the stays streamed while the candidate is in shadow (stratified by sex and sepsis): 200 of 300,
    so 14 septic women and 16 septic men; the other 100 (about 4,000 stay-hours, above the drift detector's
    2,000-stay-hour missingness window) stream under whichever model is then in production."""
    json_out: Path | None = None
    report_out: Path | None = None
    production_version: str = "2"
    """The unit's current model: the smaller gradient-boosted model of the repository."""
    candidate_version: str = "3"
    """The candidate: v1's larger model trained on v2's split, its threshold held to v2's alert budget (its card)."""
    speed: float = 0.0
    outcome_delay_hours: float = 6.0
    drift: str = "temp-degf"
    keep: bool = False
    """Leave the stack running after the summary (``vigil demo --keep``), so a person can look at it in the console."""
    deadlines: Deadlines = field(default_factory=Deadlines)
    kafka_port: int = 9092
    port_base: int = 8001
    seed: int = 7
