"""fedsar: client."""
