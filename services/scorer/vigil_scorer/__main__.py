"""``python -m vigil_scorer``: run the scorer service until SIGTERM."""

from vigil_runtime.logging import configure_logging
from vigil_runtime.service import serve
from vigil_scorer.app import create_app
from vigil_scorer.settings import Settings


def main() -> None:
    """Build the settings once and serve."""
    settings = Settings()
    configure_logging(
        settings.log_level,
        json=settings.log_json,
        service="scorer",
        repeat_interval_s=settings.log_repeat_interval_s,
    )
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
