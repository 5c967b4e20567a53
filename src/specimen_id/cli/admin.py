"""Looking after a database: info, settings, re-embedding, calibration, the web page."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..config import DEFAULTS, SETTINGS, parse_setting, setting
from .base import cli, echo, model_options, open_db


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def info(ctx, as_json):
    """Counts, model, threshold and sizes of the database."""
    from ..models.probe import filled_by
    from ..search.score import SCORE_KIND, threshold_facts

    db = open_db(ctx)
    # filled_by: the machine the other stations must embed as (models/probe.py)
    facts = {**db.info(), "filled_by": filled_by(db), "settings": {key: setting(db, key) for key in DEFAULTS},
             **threshold_facts(db),
             "calibration": db.threshold_note(SCORE_KIND) or (
                 "set for this score" if db.threshold_record(SCORE_KIND) else "default threshold")}
    if as_json:
        echo(json.dumps(facts))
        return
    for key, value in facts.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v / 1e6:.1f} MB" if key == "bytes" else f"{k} {v}"
                              for k, v in value.items())
        echo(f"{key}: {value}")


@cli.command()
@click.argument("key", required=False, type=click.Choice(sorted(SETTINGS)))
@click.argument("value", required=False)
@click.pass_context
def config(ctx, key, value):
    """Show or set a setting: threshold (on the fused score), margin (lead needed over the
    runner-up, else `ambiguous`), top_k (specimens listed), shortlist (captures verified),
    index (auto, flat, ivf, hnsw or compact), and the quality gate's max_edge_width,
    max_blur, max_clipped_detail, max_white_clipped, max_dark_clipped, min_side."""
    from ..search.score import DEFAULT_THRESHOLD, SCORE_KIND

    db = open_db(ctx)
    if value is not None:
        try:
            parsed = parse_setting(key, value)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
        if key == "threshold":
            db.set_threshold(parsed, SCORE_KIND)
        elif key == "index":
            with db.writing():  # build the new kind now, not in the next query
                db.set_setting(key, parsed, DEFAULTS.get(key))
                db.vectors.sync()
        else:
            db.set_setting(key, parsed, DEFAULTS.get(key))
    for k in [key] if key else sorted(SETTINGS):
        shown = db.threshold(SCORE_KIND, DEFAULT_THRESHOLD) if k == "threshold" else setting(db, k)
        echo(f"{k} = {shown}")


@cli.command()
@model_options
@click.option("--features-only", is_flag=True,
              help="Recompute only the local features (after an upgrade of their recipe); keep the vectors.")
@click.pass_context
def reindex(ctx, model, weights, features_only):
    """Re-embed every capture (with another --model, or the database's own)."""
    from ..indexer import reindex as run_reindex
    from ..indexer.reindex import reindex_features

    db = open_db(ctx)
    if features_only:
        if model or weights:
            raise click.UsageError("--features-only keeps the model: give no --model or --weights")
        count = reindex_features(db, progress=True)
        echo(f"recomputed the local features of {count} capture(s) ({db.setting('features_version')})")
        return
    count = run_reindex(db, model, weights, progress=True)
    echo(f"re-embedded {count} capture(s) with {db.model_id}")


@cli.command()
@click.option("--fmr", type=click.FloatRange(0, 1, min_open=True), default=0.001, show_default=True,
              help="Target false-match rate per comparison.")
@click.option("--min-genuine", type=click.IntRange(min=1), default=200, show_default=True,
              help="Simulate re-captures of enrolled images until there are this many genuine scores.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Report folder (default: DB/calibration; required for a PostgreSQL database).")
@click.pass_context
def calibrate(ctx, fmr, min_genuine, out):
    """Choose and store the threshold for a target false-match rate, with a report."""
    from ..search import calibrate as run_calibrate

    summary = run_calibrate(open_db(ctx), fmr, min_genuine, out, progress=True)
    echo(f"threshold = {summary['threshold']:.4f} for FMR {fmr:g} "
               f"(TAR {summary['tar']:.3f}; {summary['genuine']} genuine, "
               f"{summary['impostor']} impostor scores); report: {summary['report']}")
    if summary["resolvable_fmr"] > fmr:
        echo(f"warning: {summary['impostor']} impostor scores cannot resolve FMR {fmr:g}; "
             "see the report", err=True)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve on; anything but loopback needs --token.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--token", envvar="SPECIMEN_ID_TOKEN", help="Token every request must carry off loopback.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="Host name or address browsers use to reach this server (repeatable); off "
                   "loopback the default is this machine's names and addresses.")
@click.option("--max-connections", type=click.IntRange(1), default=100, show_default=True,
              help="Open connections served at once; more are answered 503.")
@click.pass_context
def browse(ctx, host, port, token, allowed_hosts, max_connections):
    """Serve a web page to browse specimens, query by upload, and review past queries."""
    import uvicorn

    from ..store import redacted
    from ..web import create_app

    try:
        app = create_app(ctx.find_root().obj, host, token, allowed_hosts=list(allowed_hosts))
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    app.state.service.embedder()  # load the model now, so the first query is as fast as the rest
    echo(f"serving {redacted(ctx.find_root().obj)} on http://{host}:{port}/", err=True)
    # idle keep-alive connections are closed after 5 s; request bodies time out in the app
    # (uvicorn counts the connection it is deciding on among those open: hence the 1)
    uvicorn.run(app, host=host, port=port, log_level="warning", limit_concurrency=max_connections + 1,
                timeout_keep_alive=5)
