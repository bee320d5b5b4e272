"""The app under concurrent load: N gradio_client clients, each sending M predictions, valid and invalid files mixed.

    python bench/load.py                                   # 16 clients x 10 predictions x 10 rounds, demo set
    python bench/load.py --clients 2 --predictions 2 --rounds 2 --manifest M   # the smoke run the tests use

Launches ``python app.py`` on 127.0.0.1 (offline, its own upload folder; nothing leaves the loopback interface),
then runs ``--rounds`` rounds; in each, all clients start at once and send their predictions back to back. About
two requests in three are valid slices: the committed axial examples (DICOM and PNG; the app's feature cache serves
repeats) and fresh random PNGs, so that the backbones really run. The others are invalid files (text, empty,
truncated DICOM, a 50k x 50k PNG bomb, a blank PNG, a GIF), which must be refused with exactly the message the
reader gives for it.

Prints, per round and overall: errors on valid files (target 0), invalid files refused with their message (target
all), p50/p95 latency of each kind, and the server's resident memory (RSS) at start, after round 1 and at the end
(target: less than 5% growth after round 1). Exit status 1 when a valid file failed or an invalid one got another
answer. ``--json FILE`` also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from spinecad.imaging import ImageReadError, read_slice

REPO = Path(__file__).resolve().parents[1]  # the checkout: its app.py, example slices and test corpus

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
from gradio_client import Client, handle_file  # noqa: E402 - after the environment that keeps it offline

EXAMPLES = REPO / "checkpoints" / "examples"
VALID_EXAMPLES = ("normal_axial.dcm", "moderate_axial.png", "severe_axial.dcm", "moderate_monochrome1")
RSS_GROWTH_TARGET = 0.05
LEVEL = "L4/L5"


@dataclass
class Outcome:
    """One request: what was sent, how long the answer took and whether it was the right one."""

    round: int
    kind: str  # "valid" or "invalid"
    file: str
    seconds: float
    ok: bool
    answer: str  # "graded" or the error message


def invalid_files() -> dict[str, bytes]:
    """Files the app must refuse, each with the reader's own message for it."""
    grey = np.tile(np.linspace(0, 255, 64), (64, 1)).astype(np.uint8)
    gif, blank = io.BytesIO(), io.BytesIO()
    Image.fromarray(grey).save(gif, format="GIF")
    Image.new("L", (64, 64), 7).save(blank, format="PNG")
    return {
        "report.dcm": b"Radiology report, not an image.\n" * 20,
        "empty.dcm": b"",
        "truncated.dcm": (EXAMPLES / "severe_axial.dcm").read_bytes()[:300],
        "bomb.png": (REPO / "tests" / "corpus" / "bomb_50000x50000.png").read_bytes(),  # checked-in corpus file
        "blank.png": blank.getvalue(),
        "scan.gif": gif.getvalue(),
    }


def expected_message(data: bytes) -> str:
    try:
        read_slice(data)
    except ImageReadError as error:
        return str(error)
    raise ValueError("an 'invalid' bench file was read as a slice")


def request_plan(client: int, count: int, folder: Path) -> list[tuple[str, Path]]:
    """The ``count`` requests of one client: (kind, file), cycling through a committed example, a random PNG
    never seen before and an invalid file; each client starts at another point of the cycle."""
    rng = np.random.default_rng(client)
    invalid = sorted(folder.glob("invalid-*"))
    plan = []
    for number in range(count):
        slot = (client + number) % 3
        if slot == 2:
            plan.append(("invalid", invalid[(client + number) // 3 % len(invalid)]))
        elif slot == 0:
            plan.append(("valid", EXAMPLES / VALID_EXAMPLES[(client + number) // 3 % len(VALID_EXAMPLES)]))
        else:
            path = folder / f"fresh-{client}-{number}-{rng.integers(1 << 30)}.png"
            Image.fromarray(rng.integers(0, 256, (160, 160), dtype=np.uint8)).save(path)
            plan.append(("valid", path))
    return plan


def run_client(url: str, plan: list[tuple[str, Path]], expected: dict[str, str], round_number: int,
               timeout_s: float, results: list[Outcome], lock: threading.Lock, start: threading.Barrier) -> None:
    client = Client(url, verbose=False)
    start.wait()
    for kind, path in plan:
        began = time.perf_counter()
        try:
            result = client.submit(handle_file(path), LEVEL, api_name="/predict").result(timeout=timeout_s)
            answer, ok = "graded", kind == "valid" and len(result["models"]) > 0
        except Exception as error:  # noqa: BLE001 - the app's refusal (AppError), a timeout, a dropped connection
            answer = str(error) or type(error).__name__
            ok = kind == "invalid" and answer == expected.get(path.name.removeprefix("invalid-"))
        with lock:
            results.append(Outcome(round_number, kind, path.name, time.perf_counter() - began, ok, answer))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def launch(manifest: Path, temp_dir: Path, log_path: Path, timeout_s: float = 120.0) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "SPINECAD_MANIFEST": str(manifest), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_SERVER_PORT": str(port), "GRADIO_TEMP_DIR": str(temp_dir), "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:  # the server keeps its own copy of the descriptor
        process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited early:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise TimeoutError(f"app.py did not answer within {timeout_s} s")


def summarise(outcomes: list[Outcome]) -> dict:
    summary = {}
    for kind in ("valid", "invalid"):
        chosen = [o for o in outcomes if o.kind == kind]
        times = [o.seconds * 1000 for o in chosen] or [float("nan")]
        summary[kind] = {"requests": len(chosen), "ok": sum(o.ok for o in chosen),
                         "errors": sum(not o.ok for o in chosen),
                         "p50_ms": round(float(np.percentile(times, 50)), 1),
                         "p95_ms": round(float(np.percentile(times, 95)), 1)}
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, default=REPO / "checkpoints" / "manifest.json")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--predictions", type=int, default=10, help="per client and round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--request-timeout", type=float, default=120.0, help="seconds one prediction may take")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not args.manifest.is_file():
        sys.exit(f"No manifest at {args.manifest}: run `python -m train --demo` first, or pass --manifest.")

    with tempfile.TemporaryDirectory(prefix="spinecad-load-") as scratch:
        work = Path(scratch)
        expected = {}
        for name, data in invalid_files().items():
            (work / f"invalid-{name}").write_bytes(data)
            expected[name] = expected_message(data)
        process, url = launch(args.manifest.resolve(), work / "gradio-tmp", work / "app.log")
        try:
            rss = {"start": rss_mib(process.pid)}
            outcomes: list[Outcome] = []
            lock = threading.Lock()
            for round_number in range(1, args.rounds + 1):
                plans = [request_plan(client, args.predictions, work) for client in range(args.clients)]
                start = threading.Barrier(args.clients)
                threads = [threading.Thread(target=run_client, daemon=True, args=(
                    url, plan, expected, round_number, args.request_timeout, outcomes, lock, start)) for plan in plans]
                began = time.perf_counter()
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(timeout=args.request_timeout * args.predictions + 60)
                seconds = time.perf_counter() - began
                rss[f"after round {round_number}"] = rss_mib(process.pid)
                round_summary = summarise([o for o in outcomes if o.round == round_number])
                print(f"round {round_number}: {seconds:5.1f} s | valid {round_summary['valid']} | "
                      f"invalid {round_summary['invalid']} | RSS {rss[f'after round {round_number}']:.0f} MiB",
                      flush=True)
            leftovers = [f"{p.relative_to(work / 'gradio-tmp')} ({p.stat().st_size} bytes)"
                         for p in (work / "gradio-tmp").rglob("*") if p.is_file() and p.stat().st_size]
        finally:
            process.terminate()
            process.wait(timeout=15)

    overall = summarise(outcomes)
    after_first, end = rss["after round 1"], rss[f"after round {args.rounds}"]
    growth = (end - after_first) / after_first
    wrong = [asdict(o) for o in outcomes if not o.ok]
    print(f"\n{args.clients} clients x {args.predictions} predictions x {args.rounds} rounds on {args.manifest}")
    print(f"valid files:   {overall['valid']['requests']} requests, {overall['valid']['errors']} errors "
          f"(target 0); latency p50 {overall['valid']['p50_ms']:.0f} ms, p95 {overall['valid']['p95_ms']:.0f} ms")
    print(f"invalid files: {overall['invalid']['requests']} requests, {overall['invalid']['ok']} refused with their "
          f"message (target all); latency p50 {overall['invalid']['p50_ms']:.0f} ms, "
          f"p95 {overall['invalid']['p95_ms']:.0f} ms")
    print(f"server RSS: start {rss['start']:.0f} MiB, after round 1 {after_first:.0f} MiB, end {end:.0f} MiB "
          f"({growth:+.1%} after round 1; target < {RSS_GROWTH_TARGET:.0%} -> "
          f"{'met' if growth < RSS_GROWTH_TARGET else 'NOT met'})")
    print(f"uploads left on the server: {len(leftovers)}" + "".join(f"\n  left: {name}" for name in leftovers[:5]))
    for outcome in wrong[:10]:
        print(f"  wrong answer: {outcome}")
    if args.json:
        args.json.write_text(json.dumps({"overall": overall, "rss_mib": rss, "rss_growth_after_round_1": growth,
                                         "uploads_left": len(leftovers), "wrong": wrong}, indent=1))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
