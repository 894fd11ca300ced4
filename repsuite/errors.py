"""``InputError``: the base of every error repsuite raises for bad input (files, fields, formats).

Each subclass's message names the file, the field and what was expected. Command-line tools catch
``InputError`` and print that message (exit code 1) instead of a traceback; this module imports nothing, so
a tool can catch it without loading torch.
"""

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input: a missing or malformed file, field or value."""
