"""``python -m vigil_registry``: run the registry service until SIGTERM."""

from vigil_registry.app import create_app
from vigil_registry.settings import Settings
from vigil_runtime.logging import configure_logging
from vigil_runtime.service import serve


def main() -> None:
    """Build the settings once and serve."""
    settings = Settings()
    configure_logging(
        settings.log_level,
        json=settings.log_json,
        service="registry",
        repeat_interval_s=settings.log_repeat_interval_s,
    )
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
