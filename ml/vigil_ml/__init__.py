"""vigil_ml."""
