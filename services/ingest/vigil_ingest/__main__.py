"""``python -m vigil_ingest``: run the ingest service until SIGTERM."""

import sys

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
    # Mapping runs in a worker thread; the event loop (and /health) waits for the interpreter lock at every hand-over.
    # At the default 5 ms interval a /health answer under a 15 MB Bundle took ~40 ms at the median; 1 ms shortens
    # each wait (tests/integration/test_ingest_bounds.py measures the bound).
    sys.setswitchinterval(0.001)
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
