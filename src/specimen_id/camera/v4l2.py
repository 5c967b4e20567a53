"""V4L2 camera controls through Debian's v4l-utils (`v4l2-ctl`): parse what it lists, decide
which controls lock exposure, white balance and focus, and set them.

Why v4l2-ctl and not a Python binding: its listing is the one form every camera's controls
are documented and reported in (bug reports, vendor notes), so the parser and the locking plan
are tested offline against real listings; a binding (linuxpy) needs a device to test anything.
Control names changed in Linux 5.16 (exposure_auto -> auto_exposure, focus_auto ->
focus_automatic_continuous, white_balance_temperature_auto -> white_balance_automatic), so
the plan knows both."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field

# aspect -> (auto controls, new name first; the manual control pinned to its current value)
ASPECTS = {
    "exposure": (("auto_exposure", "exposure_auto"), ("exposure_time_absolute", "exposure_absolute")),
    "white_balance": (("white_balance_automatic", "white_balance_temperature_auto",
                       "white_balance_component_auto"), ("white_balance_temperature",)),
    "focus": (("focus_automatic_continuous", "focus_auto"), ("focus_absolute",)),
}
# With auto exposure on, these let the camera stretch the frame time: a steady capture wants 0.
STEADY_EXTRAS = ("exposure_dynamic_framerate", "exposure_auto_priority")
V4L2_EXPOSURE_MANUAL = 1  # the V4L2 spec's value, for listings that print no menu items

_CONTROL = re.compile(r"^\s*(?P<name>[a-z0-9_]+)(?:\s+0x[0-9a-f]+)?\s+\((?P<type>[a-z0-9 ]+)\)\s*:"
                      r"\s*(?P<rest>.*)$")
_MENU_ITEM = re.compile(r"^\s*(?P<index>-?\d+):\s*(?P<label>.*?)\s*$")
_FIELD = re.compile(r"(\w+)=('[^']*'|\S+)")


@dataclass
class Control:
    name: str
    type: str
    value: int | str | None = None
    default: int | str | None = None
    minimum: int | None = None
    maximum: int | None = None
    flags: tuple[str, ...] = ()
    menu: dict[int, str] = field(default_factory=dict)


@dataclass
class LockPlan:
    settings: list[tuple[str, int]]  # (control, value) in the order to set them
    aspects: dict[str, str]  # aspect -> auto control that locks it, or why it cannot be locked
    locked_by: dict[str, tuple[str, int]]  # aspect -> (auto control, value) to verify


def _number(text: str):
    try:
        return int(text, 0)
    except ValueError:
        return text


def parse_controls(text: str) -> dict[str, Control]:
    """`v4l2-ctl --list-ctrls` / `--list-ctrls-menus` (`-l` / `-L`) output, old and new forms
    (with or without control ids and class headings), as {name: Control}."""
    controls: dict[str, Control] = {}
    menu_of = None
    for line in text.splitlines():
        found = _CONTROL.match(line)
        if found:
            values = {k: v for k, v in _FIELD.findall(found["rest"])}
            control = Control(found["name"], found["type"].strip(),
                              value=_number(values["value"]) if "value" in values else None,
                              default=_number(values["default"]) if "default" in values else None,
                              minimum=_number(values["min"]) if "min" in values else None,
                              maximum=_number(values["max"]) if "max" in values else None,
                              flags=tuple(values.get("flags", "").split(",")) if "flags" in values else ())
            controls[control.name] = control
            menu_of = control if control.type in ("menu", "intmenu") else None
            continue
        item = _MENU_ITEM.match(line) if menu_of is not None else None
        if item:
            menu_of.menu[int(item["index"])] = item["label"]
        elif line.strip():
            menu_of = None  # a class heading such as "Camera Controls"
    return controls


def parse_devices(text: str) -> list[tuple[str, list[str]]]:
    """`v4l2-ctl --list-devices` output as [(camera name, [device nodes])]."""
    devices: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line[0].isspace():
            if devices:
                devices[-1][1].append(line.strip())
        else:
            devices.append((line.strip().rstrip(":"), []))
    return devices


def lock_plan(controls: dict[str, Control]) -> LockPlan:
    """Which controls to set, and to what, to hold exposure, white balance and focus still:
    each auto control off (or to Manual Mode), then its manual twin pinned to the value the
    camera settled on, so locking does not jump to a stale manual value."""
    settings, aspects, locked_by = [], {}, {}
    for aspect, (autos, manuals) in ASPECTS.items():
        auto = next((controls[n] for n in autos if n in controls), None)
        if auto is None:
            aspects[aspect] = f"no control for it ({' / '.join(autos[:2])} not offered)"
            continue
        if auto.type in ("menu", "intmenu"):
            manual = [i for i, label in auto.menu.items() if "manual" in label.lower()]
            if auto.menu and not manual:
                offered = ", ".join(auto.menu.values())
                aspects[aspect] = f"{auto.name} offers no Manual Mode ({offered})"
                continue
            value = manual[0] if manual else V4L2_EXPOSURE_MANUAL
        else:
            value = 0
        settings.append((auto.name, value))
        locked_by[aspect] = (auto.name, value)
        aspects[aspect] = f"{auto.name}={value}" + (f" ({auto.menu[value]})" if value in auto.menu else "")
        pinned = next((controls[n] for n in manuals if n in controls), None)
        if pinned is not None and isinstance(pinned.value, int):
            settings.append((pinned.name, pinned.value))
        if aspect == "exposure":
            settings += [(n, 0) for n in STEADY_EXTRAS if n in controls]
    return LockPlan(settings, aspects, locked_by)


# -- talking to the device -----------------------------------------------------------------

def available() -> bool:
    return shutil.which("v4l2-ctl") is not None


TIMEOUT_S = 20  # a camera's driver answers in well under a second, or has hung


def _run(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["v4l2-ctl", *args], capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:  # a hung camera driver: one line, like any OSError
        raise OSError(f"v4l2-ctl {' '.join(args)} did not answer in {TIMEOUT_S:g} s") from None


def list_devices() -> str:
    done = _run("--list-devices")
    return done.stdout if done.returncode == 0 else ""


def list_controls(device: str) -> dict[str, Control]:
    done = _run("-d", device, "--list-ctrls-menus")
    if done.returncode != 0:
        raise OSError(f"v4l2-ctl -d {device} --list-ctrls-menus: {done.stderr.strip() or done.returncode}")
    return parse_controls(done.stdout)


def lock(device: str) -> tuple[dict[str, str], list[str], dict]:
    """Lock what the camera allows; returns ({aspect: how locked or why not}, [aspects not
    locked], {control: value} as listed after locking)."""
    plan = lock_plan(list_controls(device))
    errors = {}
    for name, value in plan.settings:  # one at a time, so one refusal names its control
        done = _run("-d", device, f"--set-ctrl={name}={value}")
        if done.returncode != 0:
            errors[name] = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
    after = list_controls(device)
    status = dict(plan.aspects)
    for aspect, (name, value) in plan.locked_by.items():
        if name in errors:
            status[aspect] = f"setting {name}={value} failed: {errors[name]}"
        elif name not in after or after[name].value != value:
            kept = after[name].value if name in after else "nothing"
            status[aspect] = f"{name} is still {kept} after setting it to {value}"
    not_locked = [a for a in ASPECTS if a not in plan.locked_by or not status[a].startswith(plan.locked_by[a][0] + "=")]
    return status, not_locked, {n: c.value for n, c in after.items()}
