"""Queries: nearest enrolled captures, best capture per specimen, a score and a decision."""

from .calibrate import calibrate
from .query import answer, query, rank

__all__ = ["answer", "calibrate", "query", "rank"]
