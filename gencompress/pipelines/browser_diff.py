"""Where a browser runtime's outputs part from the native runtime's: the first op whose output differs."""

from __future__ import annotations


def first_differing_op(session, page, a) -> str | None:
    return None
