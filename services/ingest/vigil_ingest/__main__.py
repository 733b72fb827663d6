"""``python -m vigil_ingest``: run the ingest service until SIGTERM."""

from vigil_ingest.app import create_app
from vigil_ingest.settings import Settings
from vigil_runtime.logging import configure_logging
from vigil_runtime.service import serve


def main() -> None:
    """Build the settings once and serve."""
    settings = Settings()
    configure_logging(
        settings.log_level,
        json=settings.log_json,
        service="ingest",
        repeat_interval_s=settings.log_repeat_interval_s,
    )
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
