"""Subcommands of `bnsweep`, one module each; every module exposes `register(subparsers)`."""
