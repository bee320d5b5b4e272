"""Manifest -> loaded models: each from the Hub at its pinned revision or from its local folder.

A model that fails to load is reported (name and reason) and the others still load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub

from spinecad.inference.familiarity import FAMILIARITY_FILE, Familiarity
from spinecad.inference.manifest import Manifest, ManifestEntry
from spinecad.logs import warn_once
from spinecad.models.model import CONFIG_FILE, CheckpointError, SpineCADModel

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A ready model, the manifest entry it came from, and where its weights were read."""

    key: str
    name: str
    model: SpineCADModel
    source: str  # e.g. "local: checkpoints/vit_b16" or "hub: org/repo@0123abc"
    note: str | None = None  # e.g. why the local copy was used instead of the Hub
    familiarity: Familiarity | None = None  # None: the checkpoint has no statistics, so no unfamiliar-image flag


@dataclass(frozen=True)
class LoadFailure:
    """A model the manifest lists that could not be loaded, and why (for the banner)."""

    key: str
    name: str
    reason: str


def load_manifest_models(manifest: Manifest) -> tuple[list[LoadedModel], list[LoadFailure]]:
    """Load every manifest entry; failures are collected, never raised."""
    loaded, failures = [], []
    for entry in manifest.models:
        try:
            loaded.append(load_entry(manifest, entry))
        except CheckpointError as error:
            logger.warning("%s not loaded: %s", entry.name, error)
            failures.append(LoadFailure(entry.key, entry.name, str(error)))
    for model in loaded:
        if model.note:
            logger.warning("%s: %s", model.name, model.note)
    return loaded, failures


def load_entry(manifest: Manifest, entry: ManifestEntry) -> LoadedModel:
    """Load one entry: Hub at the pinned revision first, the local folder when the Hub cannot serve it."""
    local = manifest.local_path(entry)
    hub_problem = None
    if entry.repo_id:
        try:
            _require_cached_when_offline(entry)
            model = SpineCADModel.load(entry.repo_id, revision=entry.revision)
            return LoadedModel(entry.key, entry.name, model, f"hub: {entry.repo_id}@{(entry.revision or '')[:12]}",
                               familiarity=load_familiarity(entry.name, model, entry.repo_id, entry.revision))
        except CheckpointError as error:
            hub_problem = str(error)
            if local is None or not local.exists():
                raise CheckpointError(f"{entry.name}: {hub_problem}") from None
    assert local is not None  # the manifest reader guarantees a path or a repo_id
    if not Path(local).exists():
        raise CheckpointError(f"{entry.name}: no checkpoint folder at {local}.")
    try:
        model = SpineCADModel.load(local)
    except CheckpointError as error:
        raise CheckpointError(f"{entry.name}: {error}") from None
    note = f"Hub copy unavailable ({hub_problem}); using the local copy." if hub_problem else None
    return LoadedModel(entry.key, entry.name, model, f"local: {local}", note,
                       familiarity=load_familiarity(entry.name, model, local))


def load_familiarity(name: str, model: SpineCADModel, source: str | Path,
                     revision: str | None = None) -> Familiarity | None:
    """The checkpoint's training-feature statistics, or None (said once) when it has none or they do not load."""
    if model.config.familiarity is None:
        warn_once(logger, f"{name}: its checkpoint has no familiarity statistics, so it cannot flag unfamiliar "
                          "images (python -m train writes them).")
        return None
    try:
        if Path(source).is_dir():
            path = Path(source) / FAMILIARITY_FILE
        else:
            path = huggingface_hub.hf_hub_download(str(source), FAMILIARITY_FILE, revision=revision)
        familiarity = Familiarity.from_file(path, model.config.familiarity)
    except Exception as error:  # noqa: BLE001 - missing, truncated or mismatched: the model still grades
        warn_once(logger, f"{name}: familiarity statistics unreadable ({type(error).__name__}: {error}); "
                          "it cannot flag unfamiliar images.")
        return None
    return familiarity


def _require_cached_when_offline(entry: ManifestEntry) -> None:
    """Offline (HF_HUB_OFFLINE=1), say plainly that a revision missing from the local cache cannot be had.

    The Hub library's own error for this case blames the internet connection without naming the revision.
    """
    if not huggingface_hub.constants.HF_HUB_OFFLINE:
        return
    cached = huggingface_hub.try_to_load_from_cache(entry.repo_id, CONFIG_FILE, revision=entry.revision)
    if not isinstance(cached, str):
        raise CheckpointError(
            f"{entry.repo_id} at revision {(entry.revision or 'main')[:12]} is not in the local Hub cache, and the "
            "Hub is offline (HF_HUB_OFFLINE=1): download it once online, or give the entry a local \"path\"."
        )
