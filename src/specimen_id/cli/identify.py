"""Enrol and query: the two commands a person at the microscope uses."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..text import one_line
from .base import cli, echo, model_options, open_db, parse_meta


@cli.command()
@click.option("--specimen", "-s", metavar="NAME", help="Specimen the FILES are captures of.")
@click.option("--folders", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Enrol every subfolder of this folder as a specimen named after it.")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", callback=parse_meta,
              help="Specimen metadata (repeatable).")
@click.option("--allow-duplicate", is_flag=True,
              help="Enrol pixels even if another specimen already has them.")
@click.option("--allow-low-quality", is_flag=True,
              help="Enrol captures below the quality limits (focus, exposure, size) too.")
@click.option("--query", "queries", multiple=True, metavar="QUERY_ID",
              help="Also enrol the image of this logged query (repeatable).")
@model_options
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.pass_context
def enroll(ctx, specimen, folders, meta, allow_duplicate, allow_low_quality, queries, model, weights,
           files):
    """Enrol FILES (or logged --query images) as captures of one specimen, or a folder of
    specimen folders."""
    from ..indexer import enroll_folders, folder_jobs

    if bool(specimen) == bool(folders):
        raise click.UsageError("give either --specimen NAME FILE... or --folders ROOT")
    if specimen and not files and not queries:
        raise click.UsageError("--specimen needs at least one FILE or --query")
    if queries:
        db = open_db(ctx)
        try:
            files = (*files, *(db.blobs.file(db.image_key("query", q)) for q in queries))
        except KeyError as e:
            raise click.BadParameter(f"no logged query {e}", param_hint="--query") from None
    if folders and files:
        raise click.UsageError("--folders takes no FILE arguments")
    if specimen is not None and not specimen.strip():
        raise click.BadParameter("the specimen name is empty", param_hint="--specimen")
    jobs = folder_jobs(folders) if folders else [(specimen.strip(), list(files))]
    report = enroll_folders(open_db(ctx), jobs, meta, model=model, weights=weights,
                            allow_duplicate=allow_duplicate, progress=True,
                            allow_low_quality=allow_low_quality)
    for error in report.refused:
        echo(f"refused: {error}", err=True)
    for path, same in report.skipped:
        if same == "pixels":  # a same-file re-run is the expected no-op; this is news
            echo(f"skipped: {one_line(path)}: same pixels as a capture already enrolled there", err=True)
    for path, warning in report.warnings:
        echo(f"warning: {one_line(path)}: {warning}", err=True)
    for path, o in report.overlaps:  # probably the same slide: worth knowing, not a refusal
        echo(f"overlaps: {one_line(path)}: {o['share_of_other']:.0%} of {one_line(o['specimen'])} (capture {o['other_capture']})")
    echo(f"enrolled {len(report.enrolled)}, skipped {len(report.skipped)} "
               f"(already enrolled), refused {len(report.refused)}")
    ctx.exit(1 if report.refused else 0)


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", type=click.IntRange(min=1), help="How many specimens to list.")
@click.option("--threshold", type=click.FloatRange(0, 1), help="Decision threshold for this query only.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file, per line.")
@model_options
@click.pass_context
def query(ctx, files, top_k, threshold, as_json, model, weights):
    """Which enrolled specimen is each FILE?"""
    from ..service import Service

    refused = False
    for result in Service(open_db(ctx), model, weights).identify_files(files, top_k, threshold):
        refused |= result["decision"] == "refused"
        if as_json:
            echo(json.dumps(result))
        elif result["decision"] == "refused":
            echo(f"refused: {result['error']}", err=True)
        else:
            echo(_format_result(result))
        for warning in result.get("warnings", []):
            echo(f"warning: {one_line(result['query'])}: {warning}", err=True)
    ctx.exit(1 if refused else 0)


def _format_result(result: dict) -> str:
    head = f"{one_line(result['query'])}: {result['decision']}"
    if result["specimen"]:
        head += f" {one_line(result['specimen'])}"
    head += f" (score {result['score']:.3f}, threshold {result['threshold']:.3f})"
    if result["decision"] == "ambiguous":
        first, second = result["contenders"]
        head += (f" between {first['specimen']} ({first['score']:.3f}) and {second['specimen']} "
                 f"({second['score']:.3f}): lead {result['lead']:.3f} < margin {result['margin']:.3f}")
    lines = [head]
    for copy in result.get("exact", []):
        lines.append(f"  same {copy['same']} as capture {copy['capture']} of {copy['specimen']}")
    for o in result.get("overlaps", []):
        lines.append(f"  overlaps {o['specimen']} (capture {o['capture']}): {o['overlap_query']:.0%} of the "
                     f"query lies in that field, {o['overlap_candidate']:.0%} of the field in the query")
    width = max((len(c["specimen"]) for c in result["candidates"]), default=0)
    for i, c in enumerate(result["candidates"], 1):
        lines.append(f"  {i:>2}. {c['specimen']:<{width}}  {c['score']:.3f}  (cnn {c['cnn_similarity']:.3f}, "
                     f"{c['inliers']} inliers over {c['spread']} cells, aligned {c['correlation']:.2f})  "
                     f"capture {c['capture']}")
        if i == 1 and c.get("placement"):
            p = c["placement"]
            lines.append(f"      placed: {p['overlap_query']:.0%} of the query in its field, "
                         f"{p['overlap_candidate']:.0%} of its field in the query, offset "
                         f"({p['offset_px'][0]:+.0f}, {p['offset_px'][1]:+.0f}) px, rotated "
                         f"{p['rotation_deg']:+.1f} deg, scale {p['scale']:.2f}")
    return "\n".join(lines)
