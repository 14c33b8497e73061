"""Subcommands of the ``sae-flux`` CLI, one module each, discovered by :mod:`sae_flux.cli`.

Each module defines ``register(subparsers)``; a job's typed config dataclass becomes its options
through :func:`add_dataclass_arguments`, so CLI, API and saved record share one definition.

A command module imports only light modules (the config dataclasses, argparse): ``--help``
must not load torch, diffusers, transformers, nnsight or sae_lens. The library code a command
runs is imported inside its ``run`` function, at dispatch.
"""
