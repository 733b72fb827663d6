"""``vigil dataset build``: a site's labelled training rows from the canonical and outcome topics.

The transport only: the topics are read with the runtime's to-the-end reader (a snapshot of what the broker
holds when the command starts), every record is parsed with the event contracts and folded into
:class:`vigil_scoring.site_dataset.DatasetBuilder`, which owns the rows, the labels and the manifest.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console

from vigil_contracts.events import OutcomeRecorded, canonical_event_adapter
from vigil_runtime.kafka_security import KafkaConnection
from vigil_runtime.reader import scan_to_end
from vigil_runtime.settings import VigilSettings
from vigil_scoring.site_dataset import DatasetBuilder, Window, write_dataset

app = typer.Typer(help="Site datasets from the streams (training rows labelled by outcomes).", no_args_is_help=True)
console = Console(stderr=True)


class DatasetSettings(VigilSettings):
    """The job's settings: the stack-wide ``VIGIL_`` values, overridable with ``DATASET_``."""

    model_config = VigilSettings.model_config | {"env_prefix": "DATASET_"}


async def read_streams(
    kafka: KafkaConnection,
    *,
    observations_topic: str,
    outcomes_topic: str,
    on_progress: Callable[[str, int], None] | None = None,
) -> tuple[DatasetBuilder, dict[str, int]]:
    """Fold both topics, as they stand now, into a builder; records that do not parse are counted, not fatal."""
    builder = DatasetBuilder()
    counts = {"observation_records": 0, "outcome_records": 0, "unparsed_records": 0}
    async for record in scan_to_end(kafka, observations_topic, timeout_s=600):
        counts["observation_records"] += 1
        try:
            builder.apply(canonical_event_adapter.validate_json(record.value or b""))
        except ValidationError:
            counts["unparsed_records"] += 1
        if on_progress and counts["observation_records"] % 50_000 == 0:
            on_progress("observations", counts["observation_records"])
    async for record in scan_to_end(kafka, outcomes_topic, timeout_s=600):
        counts["outcome_records"] += 1
        try:
            builder.apply_outcome(OutcomeRecorded.model_validate_json(record.value or b""))
        except ValidationError:
            counts["unparsed_records"] += 1
    return builder, counts


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    t = datetime.fromisoformat(value)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def build(out: Path, *, settings: DatasetSettings, window: Window) -> dict[str, Any]:
    """Read the stack's topics, build the rows of the window's stays, write them with their manifest.

    It connects as the principal its settings name (``settings.kafka``): on the secured broker the ``analyst``,
    whose ACLs read the observations and outcomes and nothing it does not need.
    """
    topics = settings.topics
    t0 = time.monotonic()
    builder, counts = asyncio.run(
        read_streams(
            settings.kafka,
            observations_topic=topics.observations,
            outcomes_topic=topics.outcomes,
            on_progress=lambda what, n: console.print(f"read {n} {what} records"),
        )
    )
    console.print(f"read {counts['observation_records']} + {counts['outcome_records']} records; building rows")
    df, stats = builder.build(window)
    source = {"observations_topic": topics.observations, "outcomes_topic": topics.outcomes, **counts}
    manifest = write_dataset(df, stats, out, window=window, source=source)
    console.print(f"dataset in {out} ({time.monotonic() - t0:.1f}s)")
    return manifest


@app.command("build")
def build_cmd(
    out: Path = typer.Option(..., "--out", help="Folder for rows.parquet and manifest.json."),
    start: str = typer.Option(None, "--from", help="ISO time: stays admitted to the ICU at or after it."),
    end: str = typer.Option(None, "--to", help="ISO time: stays admitted to the ICU before it."),
    bootstrap: str = typer.Option(
        None,
        help="Kafka bootstrap servers (default: VIGIL_KAFKA_BOOTSTRAP_SERVERS; the principal: VIGIL_KAFKA_USERNAME).",
    ),
    topic_prefix: str = typer.Option(None, help="Topic prefix of the stack (default: VIGIL_TOPIC_PREFIX)."),
) -> None:
    """Hourly PhysioNet-format rows per stay from the canonical observations, labelled from the outcome events."""
    settings = DatasetSettings()
    if bootstrap is not None:
        settings.kafka_bootstrap_servers = bootstrap
    if topic_prefix is not None:
        settings.topic_prefix = topic_prefix
    manifest = build(out, settings=settings, window=Window(_when(start), _when(end)))
    typer.echo(json.dumps(manifest, indent=2))
