"""Visual automated interpretation of Flux dictionaries (Shabalin et al. 2025, arXiv 2505.24360)."""
