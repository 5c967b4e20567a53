"""Queries: nearest enrolled captures, best capture per specimen, a score and a decision."""

from .calibrate import calibrate
from .query import query, rank

__all__ = ["calibrate", "query", "rank"]
