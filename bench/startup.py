"""Seconds from ``python app.py`` to a server that answers, offline, against a bare Gradio app in the same run;
or, with ``--profile``, the cost of loading six checkpoints the new way against the old way.

    python bench/startup.py                          # the demo set (checkpoints/manifest.json)
    python bench/startup.py --manifest other.json    # any manifest
    python bench/startup.py --profile paper          # load/init: six paper-size checkpoints, meta build + assign
                                                     # against random init + load_state_dict, same run

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


def load_ratio(profile_name: str, runs: int) -> None:
    """Median seconds to load each profile's six checkpoints (``SpineCADModel.load``: meta build, weights
    assigned) against the old way (random init, then ``load_state_dict``), interleaved in one process."""
    import safetensors.torch
    import torch

    from spinecad.models.model import WEIGHTS_FILE, SpineCADModel
    from spinecad.models.registry import profile

    with tempfile.TemporaryDirectory() as temp_dir:
        folders = []
        for spec in profile(profile_name):
            torch.manual_seed(0)
            folders.append(Path(temp_dir) / spec.name)
            SpineCADModel.build(spec.name).save_pretrained(folders[-1])
        times: dict[str, list[float]] = {"new": [], "old": [], "new touched": [], "old touched": []}
        for _ in range(runs + 1):  # the first round warms both paths up and is not counted
            new = touched = 0.0
            for folder in folders:
                start = time.perf_counter()
                model = SpineCADModel.load(folder)
                new += time.perf_counter() - start
                touched += touch(model)
            times["new"].append(new)
            times["new touched"].append(new + touched)
            old = touched = 0.0
            for folder in folders:
                config = SpineCADModel.load(folder).config  # config.json parsed outside the timed part
                start = time.perf_counter()
                model = SpineCADModel(config)
                model.load_state_dict(safetensors.torch.load_file(str(folder / WEIGHTS_FILE)), strict=True)
                old += time.perf_counter() - start
                touched += touch(model)
            times["old"].append(old)
            times["old touched"].append(old + touched)
    new, old = (statistics.median(times[name][1:]) for name in ("new", "old"))
    new_touched, old_touched = (statistics.median(times[name][1:]) for name in ("new touched", "old touched"))
    print(f"profile={profile_name} runs={runs} threads={torch.get_num_threads()}")
    print(f"old way (random init, then load_state_dict): {old:6.2f} s for six (median of "
          f"{', '.join(f'{t:.2f}' for t in times['old'][1:])})")
    print(f"new way (meta build, weights assigned):      {new:6.2f} s for six (median of "
          f"{', '.join(f'{t:.2f}' for t in times['new'][1:])})")
    print(f"load/init = {new / old:.3f} (target <= 0.35)")
    # The new way's weights are views of the mapped file, read from the page cache when first used: counting a
    # first read of every weight in both ways puts that deferred cost back.
    print(f"with every weight read once after loading: {new_touched:.2f} s against {old_touched:.2f} s "
          f"(ratio {new_touched / old_touched:.3f})")


def touch(model) -> float:
    """Seconds to read every parameter and buffer once (what the first prediction does to them)."""
    import torch

    start = time.perf_counter()
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.sum()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, default=REPO / "checkpoints" / "manifest.json")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", choices=("paper", "cpu"), help="measure checkpoint loading only (load/init)")
    args = parser.parse_args()
    if args.profile:
        load_ratio(args.profile, args.runs)
        return
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
