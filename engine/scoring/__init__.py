"""Calcium scoring: Numba connected components, Agatston, volume and mass."""
