"""vigil_ingest."""
