"""The `specimen-id` command: thin over the core. Commands open the database, call the core,
and print; domain errors become one line on stderr and an exit code:
0 success, 1 a refused input or unknown specimen, 2 usage, 3 database unusable as asked."""

from __future__ import annotations

import json
from pathlib import Path

import click

from . import __version__
from .errors import SpecimenIdError
from .models.backbones import MODEL_NAMES
from .store.database import DB_ENV, DEFAULT_DIR
from .store.settings import SETTINGS


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SpecimenIdError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except OSError as e:  # disk full, permissions: the database cannot be written as asked
            where = f" ({e.filename})" if e.filename else ""
            click.echo(f"error: {e.strerror or e}{where}; the database keeps what was committed "
                       "before it: run the command again once this is fixed", err=True)
            ctx.exit(3)


@click.group(cls=_Group)
@click.option("--db", "db_path", type=click.Path(path_type=Path), envvar=DB_ENV,
              default=DEFAULT_DIR, show_default=True, show_envvar=True,
              help="Database directory (created on first use).")
@click.version_option(__version__, prog_name="specimen-id")
@click.pass_context
def cli(ctx, db_path):
    """Identify microscope captures against enrolled reference specimens."""
    ctx.obj = db_path


def _open(ctx):
    from .store import Database

    db = Database(ctx.find_root().obj)
    ctx.call_on_close(db.close)
    return db


def _model_options(fn):
    fn = click.option("--weights", type=click.Path(dir_okay=False, path_type=Path),
                      help="Local weights file (state dict) for the model, e.g. when offline.")(fn)
    return click.option("--model", type=click.Choice(MODEL_NAMES),
                        help="Backbone (default: the database's, else efficientnet_lite0).")(fn)


def _parse_meta(ctx, param, values) -> dict:
    meta = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", ctx, param)
        meta[key.strip()] = value
    return meta


@cli.command()
@click.option("--specimen", "-s", metavar="NAME", help="Specimen the FILES are captures of.")
@click.option("--folders", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Enrol every subfolder of this folder as a specimen named after it.")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", callback=_parse_meta,
              help="Specimen metadata (repeatable).")
@click.option("--allow-duplicate", is_flag=True,
              help="Enrol pixels even if another specimen already has them.")
@click.option("--query", "queries", multiple=True, metavar="QUERY_ID",
              help="Also enrol the image of this logged query (repeatable).")
@_model_options
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.pass_context
def enroll(ctx, specimen, folders, meta, allow_duplicate, queries, model, weights, files):
    """Enrol FILES (or logged --query images) as captures of one specimen, or a folder of
    specimen folders."""
    from .indexer import enroll_folders, folder_jobs

    if bool(specimen) == bool(folders):
        raise click.UsageError("give either --specimen NAME FILE... or --folders ROOT")
    if specimen and not files and not queries:
        raise click.UsageError("--specimen needs at least one FILE or --query")
    if queries:
        db = _open(ctx)
        try:
            files = (*files, *(db.image_of("query", q) for q in queries))
        except KeyError as e:
            raise click.BadParameter(f"no logged query {e}", param_hint="--query") from None
    if folders and files:
        raise click.UsageError("--folders takes no FILE arguments")
    if specimen is not None and not specimen.strip():
        raise click.BadParameter("the specimen name is empty", param_hint="--specimen")
    jobs = folder_jobs(folders) if folders else [(specimen.strip(), list(files))]
    report = enroll_folders(_open(ctx), jobs, meta, model=model, weights=weights,
                            allow_duplicate=allow_duplicate, progress=True)
    for error in report.refused:
        click.echo(f"refused: {error}", err=True)
    for path, same in report.skipped:
        if same == "pixels":  # a same-file re-run is the expected no-op; this is news
            click.echo(f"skipped: {path}: same pixels as a capture already enrolled there", err=True)
    click.echo(f"enrolled {len(report.enrolled)}, skipped {len(report.skipped)} "
               f"(already enrolled), refused {len(report.refused)}")
    ctx.exit(1 if report.refused else 0)


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", type=click.IntRange(min=1), help="How many specimens to list.")
@click.option("--threshold", type=click.FloatRange(0, 1), help="Decision threshold for this query only.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file, per line.")
@_model_options
@click.pass_context
def query(ctx, files, top_k, threshold, as_json, model, weights):
    """Which enrolled specimen is each FILE?"""
    from .search import query as run_query

    refused = False
    for result in run_query(_open(ctx), files, top_k, threshold, model=model, weights=weights):
        refused |= result["decision"] == "refused"
        if as_json:
            click.echo(json.dumps(result))
        elif result["decision"] == "refused":
            click.echo(f"refused: {result['error']}", err=True)
        else:
            click.echo(_format_result(result))
    ctx.exit(1 if refused else 0)


def _format_result(result: dict) -> str:
    head = f"{result['query']}: {result['decision']}"
    if result["specimen"]:
        head += f" {result['specimen']}"
    lines = [f"{head} (score {result['score']:.3f}, threshold {result['threshold']:.3f})"]
    for copy in result.get("exact", []):
        lines.append(f"  same {copy['same']} as capture {copy['capture']} of {copy['specimen']}")
    width = max((len(c["specimen"]) for c in result["candidates"]), default=0)
    for i, c in enumerate(result["candidates"], 1):
        lines.append(f"  {i:>2}. {c['specimen']:<{width}}  {c['score']:.3f}  (cnn {c['cnn_similarity']:.3f}, "
                     f"{c['inliers']} inliers)  capture {c['capture']}")
    return "\n".join(lines)


@cli.command(name="list")
@click.pass_context
def list_(ctx):
    """Enrolled specimen names, one per line."""
    for specimen in _open(ctx).specimens():
        click.echo(specimen["name"])


@cli.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx, name, as_json):
    """A specimen's metadata and captures."""
    db = _open(ctx)
    specimen = db.specimen(name)
    captures = db.captures(specimen["id"])
    if as_json:
        click.echo(json.dumps({**specimen, "captures": captures}))
        return
    click.echo(f"{specimen['name']}  (uuid {specimen['uuid']}, enrolled {specimen['created_at']})")
    for key, value in specimen["metadata"].items():
        click.echo(f"  {key} = {value}")
    click.echo(f"  {len(captures)} capture(s):")
    for c in captures:
        click.echo(f"    {c['uuid']}  {c['original_name']}  {c['width']}x{c['height']} "
                   f"{c['format']} {c['dtype']}  sha256 {c['file_sha256'][:12]}  {c['created_at']}")


@cli.command()
@click.argument("name")
@click.pass_context
def remove(ctx, name):
    """Remove a specimen with its captures and embeddings."""
    db = _open(ctx)
    with db.writing():
        count = db.remove_specimen(name)
        db.save_index()
    click.echo(f"removed {name} and its {count} capture(s)")


@cli.command()
@click.argument("name")
@click.argument("new_name")
@click.pass_context
def rename(ctx, name, new_name):
    """Rename a specimen."""
    _open(ctx).rename_specimen(name, new_name)
    click.echo(f"renamed {name} to {new_name}")


@cli.command()
@click.argument("source")
@click.argument("target")
@click.pass_context
def merge(ctx, source, target):
    """Merge specimen SOURCE into TARGET (captures, queries, metadata)."""
    moved = _open(ctx).merge_specimens(source, target)
    click.echo(f"merged {source} into {target} ({moved} capture(s) moved)")


@cli.command()
@click.argument("capture")
@click.argument("specimen")
@click.pass_context
def move(ctx, capture, specimen):
    """Move a capture (by its id, see `show`) to another specimen."""
    _open(ctx).move_capture(capture, specimen)
    click.echo(f"moved capture {capture} to {specimen}")


@cli.command()
@click.argument("query_id")
@click.argument("verdict", type=click.Choice(["confirmed", "rejected"]))
@click.option("--by", "reviewer", envvar="USER", required=True, help="Who reviews (default: $USER).")
@click.option("--note", default="")
@click.pass_context
def review(ctx, query_id, verdict, reviewer, note):
    """Confirm or reject a logged decision (kept for calibration)."""
    _open(ctx).review(query_id, verdict, reviewer, note)
    click.echo(f"{verdict} query {query_id} by {reviewer}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def info(ctx, as_json):
    """Counts, model, threshold and sizes of the database."""
    from .search.score import DEFAULT_THRESHOLD, SCORE_KIND

    db = _open(ctx)
    facts = {**db.info(), "score_kind": SCORE_KIND,
             "threshold": db.threshold(SCORE_KIND, DEFAULT_THRESHOLD)}
    if as_json:
        click.echo(json.dumps(facts))
        return
    for key, value in facts.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v / 1e6:.1f} MB" if key == "bytes" else f"{k} {v}"
                              for k, v in value.items())
        click.echo(f"{key}: {value}")


@cli.command()
@click.argument("key", required=False, type=click.Choice(sorted(SETTINGS)))
@click.argument("value", required=False)
@click.pass_context
def config(ctx, key, value):
    """Show or set a setting: threshold (on the fused score), margin (lead needed over the
    runner-up, else `ambiguous`), top_k (specimens listed), shortlist (captures verified)."""
    from .search.score import DEFAULT_THRESHOLD, SCORE_KIND

    db = _open(ctx)
    if value is not None:
        try:
            parsed = SETTINGS[key](value)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a {SETTINGS[key].__name__}") from None
        if not (0 <= parsed <= 1 if key in ("threshold", "margin") else parsed >= 1):
            raise click.BadParameter(f"{key} {value} is out of range")
        if key == "threshold":
            db.set_threshold(parsed, SCORE_KIND)
        else:
            db.set_setting(key, parsed)
    for k in [key] if key else sorted(SETTINGS):
        shown = db.threshold(SCORE_KIND, DEFAULT_THRESHOLD) if k == "threshold" else db.setting(k)
        click.echo(f"{k} = {shown}")


@cli.command()
@_model_options
@click.pass_context
def reindex(ctx, model, weights):
    """Re-embed every capture (with another --model, or the database's own)."""
    from .indexer import reindex as run_reindex

    db = _open(ctx)
    count = run_reindex(db, model, weights, progress=True)
    click.echo(f"re-embedded {count} capture(s) with {db.model_id}")


@cli.command()
@click.option("--fmr", type=click.FloatRange(0, 1, min_open=True), default=0.001, show_default=True,
              help="Target false-match rate per comparison.")
@click.option("--min-genuine", type=click.IntRange(min=1), default=200, show_default=True,
              help="Simulate re-captures of enrolled images until there are this many genuine scores.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Report folder (default: DB/calibration).")
@click.pass_context
def calibrate(ctx, fmr, min_genuine, out):
    """Choose and store the threshold for a target false-match rate, with a report."""
    from .search import calibrate as run_calibrate

    summary = run_calibrate(_open(ctx), fmr, min_genuine, out, progress=True)
    click.echo(f"threshold = {summary['threshold']:.4f} for FMR {fmr:g} "
               f"(TAR {summary['tar']:.3f}; {summary['genuine']} genuine, "
               f"{summary['impostor']} impostor scores); report: {summary['report']}")
    if summary["resolvable_fmr"] > fmr:
        click.echo(f"warning: {summary['impostor']} impostor scores cannot resolve FMR {fmr:g}; "
                   "see the report", err=True)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve on; anything but loopback needs --token.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--token", envvar="SPECIMEN_ID_TOKEN", help="Token every request must carry off loopback.")
@click.pass_context
def browse(ctx, host, port, token):
    """Serve a web page to browse specimens, query by upload, and review past queries."""
    import uvicorn

    from .models import embedder_for
    from .web import create_app

    try:
        app = create_app(ctx.find_root().obj, host, token)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    embedder_for(_open(ctx))  # load the model now, so the first query is as fast as the rest
    click.echo(f"serving {ctx.find_root().obj} on http://{host}:{port}/", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def main():
    cli(prog_name="specimen-id")


if __name__ == "__main__":
    main()
