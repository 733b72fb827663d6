"""vigil_shadow."""
