"""Skeleton data: layouts and graphs, readers for real formats, preprocessing,
the synthetic generator and partitioning into sites."""
