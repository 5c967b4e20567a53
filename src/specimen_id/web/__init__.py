"""`specimen-id browse`: a small web application over one database directory."""

from .app import create_app

__all__ = ["create_app"]
