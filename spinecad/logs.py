"""One helper for the library's loggers: say a substitution once, however often it happens."""

from __future__ import annotations

import functools
import logging


@functools.lru_cache(maxsize=1024)
def warn_once(logger: logging.Logger, message: str) -> None:
    """Log ``message`` as a warning the first time it is asked for; later identical calls are silent."""
    logger.warning(message)
