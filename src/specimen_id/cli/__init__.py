"""The `specimen-id` command. Each module below adds its commands to the one group."""

from . import acquire, admin, curate, identify, integrity, records, transfer  # noqa: F401  (registers the commands)
from .base import cli


def main():
    cli(prog_name="specimen-id")


__all__ = ["cli", "main"]
