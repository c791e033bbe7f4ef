"""The ``ee`` command line."""

from ee_middleware.cli.app import main

__all__ = ["main"]
