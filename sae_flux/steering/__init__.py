"""Steering tools built on :mod:`sae_flux.steer`: grids, concept matching, measurement."""
