"""Fixtures of the CLI tests in this directory."""

from cli.cascade_fixtures import cascade_data, trained_cascade  # noqa: F401  (pytest fixtures)
