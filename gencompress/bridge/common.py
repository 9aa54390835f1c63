"""What every part of the bridge shares: its logger and one-line error text."""

import logging

log = logging.getLogger("gencompress.bridge")


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
