"""Seconds from ``python app.py`` to a server that answers, offline, against a bare Gradio app in the same run.

    python bench/startup.py                          # the demo set (checkpoints/manifest.json)
    python bench/startup.py --manifest other.json    # any manifest

Each run starts a fresh process (HF_HUB_OFFLINE=1) and polls ``/`` until HTTP 200. Runs of the app and of the
baseline (``import gradio`` and a one-Markdown Blocks launched the same way) alternate, so machine noise hits both
alike. Prints the medians, the ratio app/baseline, and the target: the full app on the demo set within 10 s on
2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 10.0
BASELINE = (
    "import gradio as gr\n"
    "with gr.Blocks(analytics_enabled=False) as demo:\n"
    "    gr.Markdown('baseline')\n"
    "demo.queue().launch(ssr_mode=False)\n"
)


def seconds_until_answering(command: list[str], manifest: Path, timeout_s: float = 120.0) -> float:
    """Start ``command`` in a fresh process and return the seconds until its server answers HTTP 200."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as temp_dir:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
               "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "GRADIO_TEMP_DIR": temp_dir,
               "SPINECAD_MANIFEST": str(manifest)}
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            while time.perf_counter() - start < timeout_s:
                if process.poll() is not None:
                    raise RuntimeError(f"{command} exited early:\n{process.stderr.read().decode()[-2000:]}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                        if response.status == 200:
                            return time.perf_counter() - start
                except OSError:
                    time.sleep(0.05)
            raise TimeoutError(f"{command} did not answer within {timeout_s} s")
        finally:
            process.terminate()
            process.wait(timeout=15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, default=REPO / "checkpoints" / "manifest.json")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not args.manifest.is_file():
        sys.exit(f"No manifest at {args.manifest}: run `python -m train --demo` first, or pass --manifest.")

    commands = {"baseline": [sys.executable, "-c", BASELINE], "app": [sys.executable, "app.py"]}
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, command in commands.items():
            times[name].append(seconds_until_answering(command, args.manifest.resolve()))
    baseline, app = (statistics.median(times[name]) for name in commands)
    print(f"manifest={args.manifest} runs={args.runs} cpus={os.cpu_count()}")
    print(f"baseline (import gradio + one-Markdown Blocks launch): {baseline:6.2f} s (median of "
          f"{', '.join(f'{t:.2f}' for t in times['baseline'])})")
    print(f"app.py (load models, build both tabs, launch):         {app:6.2f} s (median of "
          f"{', '.join(f'{t:.2f}' for t in times['app'])})")
    print(f"app/baseline = {app / baseline:.2f}")
    print(f"target: app <= {TARGET_S:.0f} s on 2 CPU cores -> {'met' if app <= TARGET_S else 'NOT met'}")


if __name__ == "__main__":
    main()
