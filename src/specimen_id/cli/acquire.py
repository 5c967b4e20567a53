"""From the microscope itself: `capture` (steady, averaged frames from a camera), `cameras`
(what is attached and which controls it offers) and `watch` (a camera app's folder)."""

from __future__ import annotations

import json
import signal
from datetime import datetime
from pathlib import Path

import click

from ..store import scheme
from ..text import name_problem, one_line
from .base import cli, echo, model_options, open_db


@cli.command()
@click.option("--device", default="0", show_default=True, metavar="N|PATH",
              help="Camera index, /dev/videoN, or a video file (same code path).")
@click.option("--frames", type=click.IntRange(1, 1000), default=8, show_default=True,
              help="Frames averaged into the capture (noise falls as 1/sqrt(frames)).")
@click.option("--warmup", type=click.IntRange(0, 1000), default=5, show_default=True,
              help="Frames dropped first, while auto exposure and white balance settle.")
@click.option("--bit-depth", type=click.Choice(["8", "16"]), default="8", show_default=True,
              help="PNG bit depth; 16 keeps the extra precision averaging gives.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="PNG to write (default: capture-YYYYmmdd-HHMMSS.png here).")
@click.option("--query", "then_query", is_flag=True, help="Query the capture at once.")
@click.option("--enroll", "then_enroll", metavar="NAME", help="Enrol the capture under this specimen.")
@click.option("--allow-low-quality", is_flag=True, help="With --enroll: enrol it even below the quality limits.")
@model_options
@click.pass_context
def capture(ctx, device, frames, warmup, bit_depth, out, then_query, then_enroll, allow_low_quality,
            model, weights):
    """Take a steady capture from a USB microscope: lock exposure, white balance and focus
    where the camera allows, average frames, save lossless PNG; then query or enrol it."""
    from ..camera.grab import capture as take

    if then_query and then_enroll:
        raise click.UsageError("give --query or --enroll NAME, not both")
    out = out or Path(f"capture-{datetime.now():%Y%m%d-%H%M%S}.png")
    facts = take(device, out, frames=frames, warmup=warmup, bit_depth=int(bit_depth))
    echo(f"captured {out}: {facts['width']}x{facts['height']}, {frames} frame(s) averaged "
               f"from {device}")
    for aspect in facts["not_locked"]:
        echo(f"warning: {aspect} not locked: {facts['controls'][aspect]}", err=True)
    if then_enroll:
        # meta={}: ctx.invoke passes defaults as they are, without the option's parsing callback
        ctx.invoke(_command("enroll"), specimen=then_enroll, files=(out,), allow_low_quality=allow_low_quality,
                   model=model, weights=weights, meta={})
    elif then_query:
        ctx.invoke(_command("query"), files=(out,), model=model, weights=weights)


def _command(name):
    """Another command of the group, invoked with the same database (its own code path)."""
    return cli.commands[name]


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per device.")
def cameras(as_json):
    """List video devices and the controls each offers, with the plan for locking them."""
    from ..camera import v4l2

    if not v4l2.available():
        echo("v4l2-ctl not found: install Debian's v4l-utils (apt-get install v4l-utils) "
             "to list and lock controls; OpenCV's properties are used without it", err=True)
    names = {node: name for name, group in v4l2.parse_devices(v4l2.list_devices() if v4l2.available()
                                                               else "") for node in group}
    # the nodes /dev holds and those v4l2-ctl names: the same on a real system, and the
    # tests' stand-in v4l2-ctl names nodes a machine without cameras lacks
    nodes = sorted({str(p) for p in Path("/dev").glob("video*")}
                   | {n for n in names if n.startswith("/dev/video")})
    if not nodes:
        echo("no video devices (/dev/video*) found", err=True)
    for node in nodes:
        entry = {"device": node, "name": names.get(node, ""), "controls": {}, "lock_plan": {}}
        if v4l2.available():
            try:
                controls = v4l2.list_controls(node)
            except OSError as e:
                entry["error"] = str(e)
            else:
                entry["controls"] = {n: c.value for n, c in controls.items()}
                entry["lock_plan"] = v4l2.lock_plan(controls).aspects
        if as_json:
            echo(json.dumps(entry))
            continue
        echo(f"{node}  {entry['name']}".rstrip())
        for name, value in entry["controls"].items():
            echo(f"  {name} = {value}")
        for aspect, how in entry["lock_plan"].items():
            echo(f"  lock {aspect}: {how}")
        if "error" in entry:
            echo(f"  {entry['error']}")


def _stop(signum, frame):
    raise KeyboardInterrupt


@cli.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--enroll", "specimen", metavar="NAME", help="Enrol each new image under this specimen.")
@click.option("--query", "as_query", is_flag=True, help="Query each new image (the default).")
@click.option("--once", is_flag=True, help="Handle what is there now, then exit.")
@click.option("--interval", type=click.FloatRange(0.05, 3600), default=1.0, show_default=True,
              help="Seconds between polls; a file counts as written after 2 unchanged polls.")
@click.option("--allow-low-quality", is_flag=True, help="With --enroll: enrol images below the quality limits.")
@model_options
@click.pass_context
def watch(ctx, folder, specimen, as_query, once, interval, allow_low_quality, model, weights):
    """Handle each new image saved into FOLDER once it is completely written: enrol it or
    query it. Content already handled (even under another name, even before a restart) is
    skipped; partial files, duplicates and non-images get one line each."""
    from ..service import Service
    from ..watch import Watcher, enrol_action, query_action

    if specimen and as_query:
        raise click.UsageError("give --enroll NAME or --query, not both")
    if specimen and (problem := name_problem(specimen)):
        raise click.BadParameter(one_line(problem), param_hint="--enroll")
    service = Service(open_db(ctx), model, weights)
    service.embedder()  # a wrong model is refused before the first file
    act = enrol_action(service, specimen, allow_low_quality) if specimen else query_action(service)
    watcher = Watcher(service.database(), folder, act, echo)
    if not once:
        # a service manager stops us with SIGTERM: end between files, like Ctrl-C
        signal.signal(signal.SIGTERM, _stop)
        echo(f"watching {folder} every {interval:g} s (Ctrl-C to stop)", err=True)
    try:
        watcher.run(interval, once)
    except KeyboardInterrupt:
        echo("stopped", err=True)


@cli.command("quality")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file.")
@click.pass_context
def quality_(ctx, files, as_json):
    """Measure captures as the quality gate does, without enrolling them: focus (edge width,
    blur), clipping of the specimen, black pixels and size, against this database's limits (the
    defaults when there is no database yet). Exit 1 when any file is below them or unreadable."""
    from .. import images, quality
    from ..errors import ImageRefused

    root = ctx.find_root().obj
    exists = scheme(root) is not None or (Path(root) / "specimens.sqlite").exists()  # (a server's: opened)
    limits = quality.limits(open_db(ctx)) if exists else dict(quality.LIMITS)
    failed = False
    for path in files:
        try:
            measures = images.load(path).quality
        except ImageRefused as e:
            echo(f"refused: {e}", err=True)
            failed = True
            continue
        found = quality.problems(measures, limits)
        failed |= bool(found)
        if as_json:
            echo(json.dumps({"path": str(path), **measures, "limits": limits, "problems": found}))
            continue
        white = (f"white background at the top {measures['white_clipped']:.1%} (max {limits['max_white_clipped']:.0%}), "
                 if measures.get("white_clipped") else "")  # only where the background is white
        echo(f"{path}: edge width {measures['edge_width']:.1%} (max {limits['max_edge_width']:.1%}), "
             f"blur {measures['blur']:.2f} (max {limits['max_blur']:g}), specimen saturated "
             f"{measures['clipped_detail']:.1%} (max {limits['max_clipped_detail']:.1%}), {white}black "
             f"{measures['dark_clipped']:.1%} (max {limits['max_dark_clipped']:.0%}), "
             f"{measures['width']}x{measures['height']} (min side {limits['min_side']}): "
             + ("; ".join(found) if found else "ok"))
    ctx.exit(1 if failed else 0)
