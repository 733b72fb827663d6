"""The drift service's HTTP API: routers in ``routes/``, their dependencies in ``deps``."""
