"""The serving process's own limits on memory: set once, at start, before the first worker thread exists.

Under sustained load the app's resident memory grew with glibc's malloc arenas: every thread that allocates gets
an arena of its own (up to 8 per core), and the memory freed in one is not returned while others hold pages
(bench/load.py: ~10% growth over 10 rounds; 2% with MALLOC_ARENA_MAX=2). Capping the arenas from inside the
process makes the bound hold however the app is started, and fewer Gradio worker threads give it fewer arenas to
spread over.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

MALLOC_ARENAS = 2  # glibc's M_ARENA_MAX; what MALLOC_ARENA_MAX=2 sets
M_ARENA_MAX = -8  # mallopt parameter number, from glibc's malloc.h
# Gradio's worker threads (launch(max_threads=...), default 40): the queue runs at most 4 requests at once
# (default_concurrency_limit), so 8 leave room for file serving without a thread (and arena) per request.
MAX_THREADS = 8


def bound_memory(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (a no-op where the C library is not glibc); True when the cap was set."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS, Windows): nothing to cap
        logger.info("no glibc mallopt here: malloc arenas are left as the C library sets them")
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))

