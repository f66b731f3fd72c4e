"""fedsar: models."""
