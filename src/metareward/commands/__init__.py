"""Subcommands of the ``metareward`` CLI; each module defines ``register(subparsers)``."""
