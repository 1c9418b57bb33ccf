"""Occupancy to mesh: the coarse-to-fine level driver (host and device), marching cubes, the native extension."""
