"""What can go wrong with the workspace store, each with a message a student or teacher can act on.

Every error the store raises on purpose is a StoreError; the app shows its message and never a
traceback. The subclasses let a page react differently (offer "Start a new workspace" for a bad
token, "Delete" for a variant whose weights are gone, "Try again" for a busy database).
"""
from __future__ import annotations


class StoreError(Exception):
    """Something about the workspace store is wrong; the message says what to do."""


class WorkspaceTokenError(StoreError):
    """A workspace link's token is malformed or names no workspace in this store."""


class VariantUnavailableError(StoreError):
    """A variant is unknown to this workspace, or its weights file is missing or damaged."""


class StoreVersionError(StoreError):
    """The database was written by a newer release: it is refused and left untouched."""


class StoreBusyError(StoreError):
    """Another process held a lock on the database for longer than the store waits."""


class StoreFullError(StoreError):
    """The disk holding the store is full: nothing was half-written, nothing stored was lost."""


class BlobError(StoreError):
    """A stored file is missing or its bytes no longer match the hash it is named by."""


class WorkspaceZipError(StoreError):
    """A workspace export (.zip) is damaged, hostile or not one this app wrote; nothing was imported."""
