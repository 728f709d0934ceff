"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""


from pydantic import ValidationError


class PersonaError(Exception):
    """A problem with the user's input or environment, worded for the user (no traceback)."""


def first_error(exc: ValidationError, whole: str) -> str:
    """`where: what` of a validation's first problem, for a one-line message (`whole` when it is the
    document itself)."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or whole
    return f"{where}: {error['msg']}"
