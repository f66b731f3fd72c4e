"""fedsar: strategies."""
