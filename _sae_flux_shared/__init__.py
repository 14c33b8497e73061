"""Mechanisms the three packages share: the bad-input error and its one-line CLI report
(:mod:`_sae_flux_shared.usererror`), the HTTP client of the OpenAI-compatible endpoints
(:mod:`_sae_flux_shared.endpoint`) and a job's config dataclass as its command line
(:mod:`_sae_flux_shared.cliargs`).

It is a package of its own, like ``_sae_flux_requirements``, because ``sae_flux``, ``itda`` and
``cae`` all use these and may not import each other except ``sae_flux`` -> ``itda`` -> ``cae``
(``sae_flux`` never imports ``cae``): a leaf that imports no project package keeps every
dependency one way and gives each mechanism one home.
"""
