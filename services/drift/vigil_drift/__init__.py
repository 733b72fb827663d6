"""vigil_drift."""
