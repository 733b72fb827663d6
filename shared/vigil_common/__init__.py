"""vigil_common."""
