"""Moving records in and out: archives (backup, move to another machine) and CSV (lab systems)."""

from __future__ import annotations

from pathlib import Path

import click

from .base import cli, echo, open_db


@cli.command()
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def export(ctx, archive):
    """Write a backup ARCHIVE (.tar or .tar.gz): a consistent snapshot, even while others write."""
    from .. import export_archive

    manifest = export_archive(open_db(ctx), archive)
    counts = manifest["counts"]
    echo(f"exported {counts['specimens']} specimen(s) ({counts['removed_specimens']} removed), "
               f"{counts['captures']} capture(s), {counts['queries']} logged quer(ies) and "
               f"{len(manifest['members']) - 1} image file(s) to {archive}")


@cli.command(name="import")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def import_(ctx, archive):
    """Restore ARCHIVE into the (new or empty) --db directory or PostgreSQL database,
    checking every file's hash."""
    from ..store import import_archive, redacted

    root = ctx.find_root().obj
    manifest = import_archive(archive, root)
    root = redacted(root)
    counts = manifest["counts"]
    echo(f"imported {counts['specimens']} specimen(s), {counts['captures']} capture(s) and "
               f"{counts['queries']} logged quer(ies) into {root}; every file matched the manifest "
               "and the index was rebuilt")


@cli.command(name="export-csv")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def export_csv(ctx, file):
    """One row per specimen: uuid, name, notes, created_at, captures, meta:KEY columns."""
    echo(f"wrote {open_db(ctx).export_csv(file)} specimen(s) to {file}")


@cli.command(name="import-csv")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def import_csv(ctx, file):
    """Update names, notes and metadata from a CSV (rows matched by uuid, else by name)."""
    report = open_db(ctx).import_csv(file)
    for problem in report.problems:
        echo(f"skipped: {file}: {problem}", err=True)
    echo(f"updated {len(report.updated)}, unchanged {report.unchanged}, "
               f"skipped {len(report.problems)} row(s)")
    ctx.exit(1 if report.problems else 0)
