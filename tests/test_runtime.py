"""The app's memory bounds take effect in glibc itself: a fresh process with and without ``bound_memory``."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from spinecad.ui import runtime
from tests.conftest import REPO

# Run in a fresh interpreter: mallopt acts on the whole process, and the settings must come before the threads.
PROBE = r"""
import ctypes, ctypes.util, json, os, sys, tempfile, threading

from spinecad.ui import runtime

bounded = runtime.bound_memory() if sys.argv[1] == "bounded" else None
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


libc.mallinfo2.restype = MallInfo2

# Eight threads allocate at once (a barrier holds them together): each gets an arena of its own up to the cap.
barrier, held = threading.Barrier(8), []
def allocate():
    barrier.wait()
    held.append(libc.malloc(4096))
    barrier.wait()
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
with tempfile.NamedTemporaryFile("r", suffix=".xml") as report:
    libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
    stream = libc.fopen(report.name.encode(), b"w")
    libc.malloc_info.argtypes, libc.fclose.argtypes = [ctypes.c_int, ctypes.c_void_p], [ctypes.c_void_p]
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    arenas = report.read().count("<heap nr=")

# A freed 4 MiB mmapped block raises glibc's dynamic mmap threshold past 3 MiB unless the threshold is fixed: a
# 3 MiB block is then carved from the heap (and kept there) instead of mmapped (and returned when freed).
libc.free(libc.malloc(4 << 20))
before = libc.mallinfo2().hblks
block = libc.malloc(3 << 20)
mmapped = libc.mallinfo2().hblks - before
libc.free(block)
print(json.dumps({"bounded": bounded, "arenas": arenas, "mmapped": mmapped}))
"""


def probe(mode: str) -> dict:
    result = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc", reason="glibc only")
def test_bound_memory_caps_the_arenas_and_fixes_the_mmap_threshold():
    default, bounded = probe("default"), probe("bounded")
    assert bounded["bounded"] is True
    # Unbounded, glibc gives the eight threads arenas of their own (its limit is 8 per core).
    assert default["arenas"] > runtime.MALLOC_ARENAS + 1, default
    assert bounded["arenas"] <= runtime.MALLOC_ARENAS, bounded
    assert (default["mmapped"], bounded["mmapped"]) == (0, 1), (default, bounded)


def test_the_launched_app_keeps_at_most_max_sessions_of_state(demo_predictor, upload_dir, monkeypatch, tmp_path):
    # Each client is a new session; Gradio would keep every one (its default is 10,000, ~0.24 MB each here).
    from gradio_client import Client, handle_file

    from spinecad import ui
    from tests.app_fixture import free_port
    from tests.conftest import EXAMPLES_DIR

    monkeypatch.setattr(runtime, "MAX_SESSIONS", 3)
    blocks = ui.build(demo_predictor, examples_dir=EXAMPLES_DIR)
    _, url, _ = ui.launch(blocks, prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(),
                          quiet=True)
    try:
        note = tmp_path / "note.txt"
        note.write_text("not an image")
        for _ in range(5):
            client = Client(url, verbose=False)
            with pytest.raises(Exception, match="not"):  # refused in words (AppError): a cheap request
                client.predict(handle_file(str(note)), "L4/L5", "raw", api_name="/predict")
            client.close()
        assert blocks.state_session_capacity == 3
        assert 1 <= len(blocks.state_holder.session_data) <= 3
    finally:
        blocks.close()
