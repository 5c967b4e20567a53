"""Checking and fixing a database directory: verify, repair."""

from __future__ import annotations

import click

from .base import cli, echo, open_db


@cli.command()
@click.pass_context
def verify(ctx):
    """Check SQLite, embeddings, the index and every managed image; one line per finding.
    Exits 1 when there is a problem (notices are harmless leftovers)."""
    from ..local_features import FEATURE_VERSION

    report = open_db(ctx).verify(FEATURE_VERSION)
    for finding in report.findings:
        echo(str(finding))
    echo(report.summary())
    ctx.exit(1 if report.problems else 0)


@cli.command()
@click.pass_context
def repair(ctx):
    """Fix what can be fixed from SQLite and the managed images (index, embeddings, local
    features, leftover files); say what cannot."""
    from ..indexer.repair import repair as run_repair

    result = run_repair(open_db(ctx))
    for line in result.fixed:
        echo(f"fixed: {line}")
    for line in result.unfixable:
        echo(f"cannot fix: {line}")
    for finding in result.after.problems:
        echo(f"still: {finding}")
    echo(result.after.summary())
    ctx.exit(1 if result.after.problems else 0)
