"""fedsar: simulations."""
