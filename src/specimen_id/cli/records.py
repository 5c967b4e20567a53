"""The record of changes and undoing removals: audit, restore, purge."""

from __future__ import annotations

import json

import click

from .base import cli, echo, open_db


@cli.command()
@click.option("--specimen", metavar="NAME", help="Only changes to this specimen (removed or purged too).")
@click.option("--limit", type=click.IntRange(min=1), help="Only the N most recent changes.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per change, per line.")
@click.pass_context
def audit(ctx, specimen, limit, as_json):
    """Every change made to the database, newest first: when, who, where, what."""
    for row in open_db(ctx).audit_trail(specimen, limit):
        if as_json:
            echo(json.dumps(row))
            continue
        who = f"{row['user']}@{row['station']}" + (f" ({row['client']})" if row["client"] else "")
        what = " ".join(x for x in (row["specimen_name"], row["capture_uuid"]) if x)
        echo(f"{row['at']}  {who}  {row['action']}  {what}  {json.dumps(row['changes'])}")


@cli.command()
@click.argument("name")
@click.pass_context
def restore(ctx, name):
    """Bring back a removed specimen with its captures (same ids, back in the index)."""
    count = open_db(ctx).restore_specimen(name)
    echo(f"restored {name} and its {count} capture(s)")


@cli.command()
@click.argument("name", required=False)
@click.option("--all-removed", is_flag=True, help="Purge every removed specimen.")
@click.pass_context
def purge(ctx, name, all_removed):
    """Delete a removed specimen for good, with the image files nothing else uses."""
    if bool(name) == all_removed:
        raise click.UsageError("give either NAME or --all-removed")
    db = open_db(ctx)
    for each in db.removed_specimens() if all_removed else [name]:
        done = db.purge_specimen(each)
        echo(f"purged {each}: {done['captures']} capture(s), {len(done['files'])} image file(s) "
             "deleted (files still used by other captures or logged queries are kept)")
