"""Steering vectors (placeholder during build)."""
