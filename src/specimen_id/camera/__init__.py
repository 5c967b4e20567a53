"""From the microscope itself: V4L2 controls (v4l2.py) and steady, averaged captures (grab.py)."""
