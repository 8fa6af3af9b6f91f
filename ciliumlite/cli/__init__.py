"""The ``ciliumlite`` command line."""

from ciliumlite.cli.app import app, main

__all__ = ["app", "main"]
