"""The `specimen-id` command: thin over the core. Commands open the database, call the core,
and print; domain errors become one line on stderr and an exit code:
0 success, 1 a refused input or unknown specimen, 2 usage, 3 database unusable as asked."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import click

from .. import __version__
from ..errors import SpecimenIdError, storage_failure
from ..models.backbones import MODEL_NAMES
from ..store import DB_ENV, DEFAULT_DIR, STATION, STATION_ENV, redacted
from ..text import escaped


def echo(message: str = "", err: bool = False) -> None:
    """click.echo, with every control character but the line breaks of the message made
    visible: nothing printed can steer the terminal. Values inside a line (file and specimen
    names, metadata) go through text.one_line, so they cannot forge a line either."""
    click.echo(escaped(str(message)), err=err)


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SpecimenIdError as e:
            echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except (OSError, sqlite3.Error) as e:  # disk full, read-only, permissions, I/O
            failed = storage_failure(e, getattr(e, "filename", None) or redacted(ctx.obj or DEFAULT_DIR))
            echo(f"error: {failed or _unexpected(e)}", err=True)
            ctx.exit(3)
        except Exception as e:  # a database server's error no backend turned into one line
            if not type(e).__module__.startswith("psycopg"):
                raise
            echo(f"error: {redacted(ctx.obj or DEFAULT_DIR)}: {' '.join(str(e).split())}; what was committed "
                 "before it is kept", err=True)
            ctx.exit(3)


def _unexpected(e: BaseException) -> str:
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    return (f"{getattr(e, 'strerror', None) or e}{where}; the database keeps what was committed before "
            "it: run the command again once this is fixed")


@click.group(cls=_Group)
@click.option("--db", "db_path", type=str, envvar=DB_ENV,
              default=DEFAULT_DIR, show_default=True, show_envvar=True,
              help="Database directory (created on first use), or a PostgreSQL URL "
                   "(postgresql://user@host/db) that many stations share.")
@click.option("--station", envvar=STATION_ENV, show_envvar=True,
              help="This microscope station's name in the audit trail (default: the host name).")
@click.version_option(__version__, prog_name="specimen-id")
@click.pass_context
def cli(ctx, db_path, station):
    """Identify microscope captures against enrolled reference specimens."""
    if station:
        token = STATION.set(station)  # (read where each change is audited)
        ctx.call_on_close(lambda: STATION.reset(token))
    ctx.obj = db_path


def open_db(ctx):
    from ..store import open_store

    db = open_store(ctx.find_root().obj)
    ctx.call_on_close(db.close)
    return db


def model_options(fn):
    fn = click.option("--weights", type=click.Path(dir_okay=False, path_type=Path),
                      help="Local weights file (state dict) for the model, e.g. when offline.")(fn)
    return click.option("--model", type=click.Choice(MODEL_NAMES),
                        help="Backbone (default: the database's, else efficientnet_lite0).")(fn)


def parse_meta(ctx, param, values) -> dict:
    meta = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", ctx, param)
        meta[key.strip()] = value
    return meta
