"""vigil_registry."""
