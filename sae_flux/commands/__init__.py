"""Subcommands of the ``sae-flux`` CLI, one module each, discovered by :mod:`sae_flux.cli`.

Each module defines ``register(subparsers)``; a job's typed config dataclass becomes its options
through :func:`add_dataclass_arguments`, so CLI, API and saved record share one definition.
"""
