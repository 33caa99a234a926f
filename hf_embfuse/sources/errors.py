"""The one exception class the source readers raise for bad input."""

from __future__ import annotations


class SourceError(ValueError):
    """A source cannot be read as given; the message names the input and how to fix it.

    Subclasses `ValueError` so callers that already guard against bad values keep working.
    """
