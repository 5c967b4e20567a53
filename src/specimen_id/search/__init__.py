"""Queries: nearest enrolled captures, best capture per specimen, a score and a decision."""

from .query import query, rank

__all__ = ["query", "rank"]
