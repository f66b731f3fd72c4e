"""fedsar: privacy."""
