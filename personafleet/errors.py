"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""


class PersonaError(Exception):
    """A problem with the user's input or environment, worded for the user (no traceback)."""
