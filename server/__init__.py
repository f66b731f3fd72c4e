"""fedsar: server."""
