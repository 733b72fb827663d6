"""vigil_scorer."""
