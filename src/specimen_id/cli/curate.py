"""Browse and correct what is enrolled: list, show, remove, rename, merge, move, review."""

from __future__ import annotations

import json

import click

from ..text import one_line
from .base import cli, echo, open_db


@cli.command(name="list")
@click.pass_context
def list_(ctx):
    """Enrolled specimen names, one per line."""
    for specimen in open_db(ctx).specimens():  # one line each, whatever an old name holds
        echo(one_line(specimen["name"]))


@cli.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx, name, as_json):
    """A specimen's metadata and captures."""
    db = open_db(ctx)
    specimen = db.specimen(name)
    captures = db.captures(specimen["id"])
    overlaps = db.overlaps_of(specimen["id"])
    if as_json:
        echo(json.dumps({**specimen, "captures": captures, "overlaps": overlaps}))
        return
    echo(f"{one_line(specimen['name'])}  (uuid {specimen['uuid']}, enrolled {specimen['created_at']})")
    for key, value in specimen["metadata"].items():
        echo(f"  {one_line(key)} = {one_line(value)}")
    echo(f"  {len(captures)} capture(s):")
    for c in captures:
        echo(f"    {c['uuid']}  {one_line(c['original_name'])}  {c['width']}x{c['height']} "
             f"{c['format']} {c['dtype']}  sha256 {c['file_sha256'][:12]}  {c['created_at']}")
    if overlaps:
        echo(f"  overlaps {len(overlaps)} field(s) of other specimens:")
    for o in overlaps:
        echo(f"    capture {o['capture']} shares {o['share_of_capture']:.0%} of its field with "
             f"{o['specimen']} (capture {o['other_capture']}, {o['share_of_other']:.0%} of that field)")


@cli.command()
@click.argument("name")
@click.pass_context
def remove(ctx, name):
    """Remove a specimen from list, query and the web pages (kept until `purge`; `restore` undoes)."""
    count = open_db(ctx).remove_specimen(name)
    echo(f"removed {name} and its {count} capture(s) (kept until purged: "
               f"`specimen-id restore {name}` undoes this)")


@cli.command()
@click.argument("name")
@click.argument("new_name")
@click.pass_context
def rename(ctx, name, new_name):
    """Rename a specimen (NAME may be its uuid: a name that cannot be typed is reached so)."""
    open_db(ctx).rename_specimen(name, new_name)
    echo(f"renamed {name} to {new_name}")


@cli.command()
@click.argument("source")
@click.argument("target")
@click.pass_context
def merge(ctx, source, target):
    """Merge specimen SOURCE into TARGET (captures, queries, metadata)."""
    moved = open_db(ctx).merge_specimens(source, target)
    echo(f"merged {source} into {target} ({moved} capture(s) moved)")


@cli.command()
@click.argument("capture")
@click.argument("specimen")
@click.pass_context
def move(ctx, capture, specimen):
    """Move a capture (by its id, see `show`) to another specimen."""
    open_db(ctx).move_capture(capture, specimen)
    echo(f"moved capture {capture} to {specimen}")


@cli.command()
@click.argument("query_id")
@click.argument("verdict", type=click.Choice(["confirmed", "rejected"]), required=False)
@click.option("--specimen", metavar="NAME", help="The enrolled specimen the query shows.")
@click.option("--none", "none_", is_flag=True, help="The query shows none of the specimens offered.")
@click.option("--by", "reviewer", envvar="USER", required=True, help="Who reviews (default: $USER).")
@click.option("--note", default="")
@click.pass_context
def review(ctx, query_id, verdict, specimen, none_, reviewer, note):
    """Say what a logged query shows: --specimen NAME, or --none of those offered (kept, with
    every earlier review, and used by `calibrate`). `confirmed` or `rejected` judge only its
    decision, naming no specimen."""
    if sum(map(bool, (verdict, specimen, none_))) != 1:
        raise click.UsageError("give one of --specimen NAME, --none, confirmed or rejected")
    answer = "specimen" if specimen else "none" if none_ else verdict
    open_db(ctx).review(query_id, answer, reviewer, note, specimen=specimen)
    said = f"shows {specimen}" if specimen else "shows none of those offered" if none_ else verdict
    echo(f"query {query_id} {said} (by {one_line(reviewer)})")
