"""Publish a run: one Hub model repo per backbone (checkpoint + its evaluation files), pinned in the manifest."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from spinecad.inference.manifest import read_manifest, write_manifest


class HubPushError(RuntimeError):
    """Publishing failed (no network, no token, no rights); the message says which repo and why."""


def repo_name(org: str, key: str) -> str:
    """``<org>/spinecad-<key>``, e.g. ``my-lab/spinecad-vit_b16``."""
    return f"{org}/spinecad-{key}"


def push_run(output_dir: Path, org: str, *, private: bool = False) -> Path:
    """Create or update each model's repo, then rewrite ``manifest.json`` with repo ids and commit ids."""
    from huggingface_hub import HfApi

    api = HfApi()
    manifest_path = output_dir / "manifest.json"
    manifest = read_manifest(manifest_path)
    pinned = []
    for entry in manifest.models:
        repo_id = repo_name(org, entry.key)
        with tempfile.TemporaryDirectory() as staging_name:
            staging = Path(staging_name)
            hidden = shutil.ignore_patterns(".*")  # staging folders and half-written files never leave the machine
            shutil.copytree(output_dir / (entry.path or entry.key), staging, dirs_exist_ok=True, ignore=hidden)
            evaluation = output_dir / "evaluation" / entry.key
            if evaluation.exists():
                shutil.copytree(evaluation, staging / "evaluation", dirs_exist_ok=True, ignore=hidden)
            try:
                api.create_repo(repo_id, private=private, exist_ok=True)
                commit = api.upload_folder(repo_id=repo_id, folder_path=staging,
                                           commit_message=f"SpineCAD {entry.name} checkpoint and evaluation")
            except Exception as error:  # noqa: BLE001 - HTTP, auth and network errors all mean the same here
                raise HubPushError(f"Could not push {entry.name} to {repo_id}: {error}") from None
        pinned.append(replace(entry, repo_id=repo_id, revision=commit.oid))
        print(f"pushed {entry.name} to {repo_id}@{commit.oid[:12]}")
    write_manifest(replace(manifest, models=tuple(pinned)), manifest_path)
    return manifest_path
