"""The serving process's own limits on memory: set once, at start, before the first worker thread exists.

Under sustained load the app's resident memory grew with glibc's malloc arenas: every thread that allocates gets
an arena of its own (up to 8 per core), and the memory freed in one is not returned while others hold pages
(bench/load.py: ~10% growth over 10 rounds; 8% with the arenas capped at 2), and large blocks freed stayed in the
heap once glibc had raised its mmap threshold. Setting both from inside the process makes the bound hold however
the app is started; fewer Gradio worker threads give it fewer arenas to spread over. What grew beyond that was
Gradio's per-session state, which ``MAX_SESSIONS`` bounds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

MALLOC_ARENAS = 2  # glibc's M_ARENA_MAX; what MALLOC_ARENA_MAX=2 sets
# Blocks from 1 MiB up (images, activations) are mmapped and go back to the system when freed; by default glibc
# raises this threshold as large blocks are freed, and they then stay in the heap, fragmenting it.
MMAP_THRESHOLD = 1 << 20
M_ARENA_MAX, M_MMAP_THRESHOLD = -8, -3  # mallopt parameter numbers, from glibc's malloc.h
# Gradio's worker threads (launch(max_threads=...), default 40): the queue runs at most 4 requests at once
# (default_concurrency_limit), so 8 leave room for file serving without a thread (and arena) per request.
MAX_THREADS = 8
# Gradio keeps a SessionState per session (launch(state_session_capacity=...), default 10,000): the config of all
# ~140 components (0.24 MB of Python objects here, ~0.4 MB a session as measured) plus the session's gr.State
# values, freed only when evicted. bench/load.py's 16 new sessions a round grew the server by ~5 MB a round; at the
# default that would reach gigabytes. Beyond this many, the least recently used session is dropped (its visitor
# re-uploads): on 2 vCPUs at about a second a grading, 64 visitors in the last minutes is more than one Space serves.
MAX_SESSIONS = 64


def bound_memory(arenas: int = MALLOC_ARENAS, mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Cap glibc's malloc arenas and fix its mmap threshold (a no-op where the C library is not glibc); True when
    both were set."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS, Windows): nothing to cap
        logger.info("no glibc mallopt here: malloc arenas are left as the C library sets them")
        return False
    return bool(mallopt(M_ARENA_MAX, arenas)) and bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold))

