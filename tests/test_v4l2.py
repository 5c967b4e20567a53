"""Reading v4l2-ctl listings of real cameras and planning which controls lock exposure, white
balance and focus (fixtures/v4l2/SOURCES.md says where each listing comes from)."""

import json
import os
from pathlib import Path

import pytest

from specimen_id.camera.v4l2 import lock_plan, parse_controls, parse_devices

FIXTURES = Path(__file__).parent / "fixtures" / "v4l2"


def _listing(name):
    return parse_controls((FIXTURES / name).read_text())


def test_new_kernel_names_are_parsed_with_menus_and_flags():
    text = (FIXTURES / "logitech-c920-linux6.txt").read_text()
    controls = parse_controls(text)
    # one per control line (each carries its id), headings and menu items not counted
    assert len(controls) == text.count(" 0x009") == 17
    ae = controls["auto_exposure"]
    assert (ae.type, ae.value, ae.default) == ("menu", 3, 3)
    assert ae.menu == {1: "Manual Mode", 3: "Aperture Priority Mode"}
    assert controls["power_line_frequency"].menu == {0: "Disabled", 1: "50 Hz", 2: "60 Hz"}
    assert controls["exposure_time_absolute"].flags == ("inactive",)
    assert (controls["exposure_time_absolute"].minimum, controls["exposure_time_absolute"].maximum) == (3, 2047)
    assert controls["pan_absolute"].minimum == -36000
    assert controls["white_balance_automatic"].type == "bool"


@pytest.mark.parametrize("listing, names", [
    ("logitech-c920-linux6.txt", ("auto_exposure", "exposure_time_absolute", "exposure_dynamic_framerate",
                                  "white_balance_automatic", "focus_automatic_continuous")),
    ("logitech-c920-linux5.txt", ("exposure_auto", "exposure_absolute", "exposure_auto_priority",
                                  "white_balance_temperature_auto", "focus_auto")),
])
def test_old_and_new_kernel_names_give_the_same_locks(listing, names):
    auto_exposure, exposure, framerate, auto_wb, auto_focus = names
    plan = lock_plan(_listing(listing))
    # auto off first, then each manual control pinned where the camera had settled
    assert plan.settings == [(auto_exposure, 1), (exposure, 333), (framerate, 0),
                             (auto_wb, 0), ("white_balance_temperature", 4633),
                             (auto_focus, 0), ("focus_absolute", 30)]
    assert plan.aspects["exposure"] == f"{auto_exposure}=1 (Manual Mode)"
    assert set(plan.locked_by) == {"exposure", "white_balance", "focus"}


def test_an_old_listing_without_ids_or_menu_items():
    controls = _listing("opencv-issue-8096.txt")
    assert len(controls) == 11
    assert controls["white_balance_temperature_auto"].value == 1
    assert controls["exposure_auto"].menu == {}  # `-l` prints no items
    plan = lock_plan(controls)
    # no items to read: V4L2's own value for Manual Mode
    assert ("exposure_auto", 1) in plan.settings and ("exposure_absolute", 600) in plan.settings
    assert ("white_balance_temperature_auto", 0) in plan.settings
    assert ("white_balance_temperature", 17) in plan.settings
    assert "focus" not in plan.locked_by
    assert plan.aspects["focus"].startswith("no control for it")


def test_menu_labels_decide_the_manual_value_and_intmenus_parse():
    controls = _listing("pyvidctrl-issue-11-excerpt.txt")
    assert controls["auto_exposure"].menu == {0: "Auto Mode", 1: "Manual Mode"}
    bias = controls["auto_exposure_bias"]
    assert bias.type == "intmenu" and len(bias.menu) == 15
    assert bias.menu[0] == "-4000 (0xfffffffffffff060)" and bias.menu[12] == "0 (0x0)"
    plan = lock_plan(controls)
    assert plan.settings == [("auto_exposure", 1), ("exposure_time_absolute", 1000),
                             ("exposure_dynamic_framerate", 0)]
    assert sorted(a for a in plan.aspects if a not in plan.locked_by) == ["focus", "white_balance"]


def test_a_menu_without_manual_mode_cannot_lock_exposure():
    controls = _listing("logitech-c920-linux6.txt")
    del controls["auto_exposure"].menu[1]  # a camera that offers Aperture Priority only
    plan = lock_plan(controls)
    assert "exposure" not in plan.locked_by
    assert "offers no Manual Mode" in plan.aspects["exposure"]
    assert not any(name.startswith("exposure") or name == "auto_exposure" for name, _ in plan.settings)


def test_list_devices():
    devices = parse_devices((FIXTURES / "list-devices.txt").read_text())
    assert devices[0] == ("HD Pro Webcam C920 (usb-0000:00:14.0-2)",
                          ["/dev/video0", "/dev/video1", "/dev/media0"])
    assert devices[1][0] == "bcm2835-codec-decode (platform:bcm2835-codec)"
    assert len(devices[1][1]) == 6 and devices[1][1][-1] == "/dev/media2"


def _stand_in(tmp_path, monkeypatch, video0: str):
    """A v4l2-ctl on PATH that lists the real devices above, answers for /dev/video0 with
    `video0` (a shell command), and fails for the nodes it cannot open, as v4l2-ctl does."""
    tool = tmp_path / "bin" / "v4l2-ctl"
    tool.parent.mkdir()
    tool.write_text(f"""#!/bin/sh
case "$*" in
  --list-devices) cat '{FIXTURES / "list-devices.txt"}' ;;
  "-d /dev/video0 --list-ctrls-menus") {video0} ;;
  *) echo "Cannot open device $2, exiting." >&2; exit 1 ;;
esac
""")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}{os.pathsep}{os.environ['PATH']}")


def test_cameras_lists_each_device_with_its_controls_and_lock_plan(run, tmp_path, monkeypatch):
    """`cameras` through a stand-in v4l2-ctl that answers as a C920 on Linux 6 does (the real
    listings above), and fails for the nodes it cannot open, as v4l2-ctl does."""
    import json
    import os

    tool = tmp_path / "bin" / "v4l2-ctl"
    tool.parent.mkdir()
    tool.write_text(f"""#!/bin/sh
case "$*" in
  --list-devices) cat '{FIXTURES / "list-devices.txt"}' ;;
  "-d /dev/video0 --list-ctrls-menus") cat '{FIXTURES / "logitech-c920-linux6.txt"}' ;;
  *) echo "Cannot open device $2, exiting." >&2; exit 1 ;;
esac
""")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}{os.pathsep}{os.environ['PATH']}")
    listed = run("cameras", "--json")
    assert listed.exit_code == 0, listed.output
    entries = {e["device"]: e for e in map(json.loads, listed.stdout.splitlines())}
    # every video node of both devices, never the media nodes
    assert {"/dev/video0", "/dev/video1", "/dev/video10", "/dev/video31"} <= set(entries)
    assert not any(d.startswith("/dev/media") for d in entries)
    c920 = entries["/dev/video0"]
    assert c920["name"] == "HD Pro Webcam C920 (usb-0000:00:14.0-2)"
    assert c920["controls"]["auto_exposure"] == 3 and c920["controls"]["focus_absolute"] == 30
    assert c920["lock_plan"]["exposure"] == "auto_exposure=1 (Manual Mode)"
    assert "Cannot open device /dev/video1" in entries["/dev/video1"]["error"]
    text = run("cameras").stdout
    assert "/dev/video0  HD Pro Webcam C920" in text and "  lock exposure: auto_exposure=1 (Manual Mode)" in text


def test_a_hung_camera_driver_is_one_line_and_the_other_devices_are_still_listed(run, tmp_path, monkeypatch):
    from specimen_id.camera import v4l2

    _stand_in(tmp_path, monkeypatch, "sleep 30")
    monkeypatch.setattr(v4l2, "TIMEOUT_S", 0.5)  # the limit, not the behaviour: 20 s in use
    listed = run("cameras", "--json")
    assert listed.exit_code == 0, listed.output
    entries = {e["device"]: e for e in map(json.loads, listed.stdout.splitlines())}
    assert entries["/dev/video0"]["error"] == "v4l2-ctl -d /dev/video0 --list-ctrls-menus did not answer in 0.5 s"
    assert "Cannot open device /dev/video1" in entries["/dev/video1"]["error"]
