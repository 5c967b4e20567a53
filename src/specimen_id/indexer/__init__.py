"""Enrolment: image files to stored captures, embeddings and index entries."""

from .enroll import EnrolReport, enroll, enroll_folders, folder_jobs
from .reindex import reindex

__all__ = ["EnrolReport", "enroll", "enroll_folders", "folder_jobs", "reindex"]
