"""The model manifest: which checkpoints a predictor loads, from a local folder and/or the Hub.

Format (``checkpoints/manifest.json``, written down here once)::

    {
      "format": "spinecad-manifest/1",
      "title": "Phantom demo set",            # shown in the app's banner
      "demo": true,                           # true: weights trained on synthetic phantoms, not for clinical use
      "evaluation": "evaluation",             # optional folder of evaluation artefacts, relative to the manifest
      "models": [
        {"key": "vit_b16", "name": "ViT-B/16",
         "path": "vit_b16",                   # optional local folder (relative to the manifest) with the checkpoint
         "repo_id": "org/spinecad-vit-b16",   # optional Hub model repo ...
         "revision": "0123abc...40 hex"}      # ... at a pinned commit (required with repo_id)
      ],
      "localizer":                            # optional: the disc-level localiser the study mode places levels with
        {"key": "localizer-cpu", "name": "Disc-level localiser",
         "path": "localizers/localizer-cpu"}  # path and/or repo_id + revision, exactly as a model entry
    }

An entry with ``repo_id`` loads from the Hub (or its local cache) at ``revision``; when that fails and ``path``
exists, the local copy is used and the predictor says so. Without a ``localizer`` the study mode asks the user to
click the levels (``spinecad.inference.localizing.load_localizer`` says why when one is listed but fails to load).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from spinecad.atomic import write_text_atomic

FORMAT = "spinecad-manifest/1"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class ManifestError(ValueError):
    """A manifest that cannot be read; the message names the file and the entry."""


@dataclass(frozen=True)
class ManifestEntry:
    """One model of the manifest: a display name and where its checkpoint lives."""

    key: str
    name: str
    path: str | None = None
    repo_id: str | None = None
    revision: str | None = None

    @property
    def pinned(self) -> bool:
        return bool(self.revision and _COMMIT.match(self.revision))


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest; paths are resolved against ``root`` (the manifest's folder)."""

    models: tuple[ManifestEntry, ...]
    title: str = "SpineCAD models"
    demo: bool = False
    evaluation: str | None = None
    localizer: ManifestEntry | None = None  # the disc-level localiser, when one is listed
    root: Path = field(default=Path("."), compare=False)

    def local_path(self, entry: ManifestEntry) -> Path | None:
        return (self.root / entry.path) if entry.path else None

    @property
    def evaluation_dir(self) -> Path | None:
        return (self.root / self.evaluation) if self.evaluation else None


def read_manifest(path: str | Path) -> Manifest:
    """Parse and check a manifest file."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"No model manifest at {path}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ManifestError(f"The model manifest {path} is not valid JSON (truncated or corrupt).") from None
    if not isinstance(values, dict) or values.get("format") != FORMAT:
        raise ManifestError(f"{path}: expected a JSON object with \"format\": \"{FORMAT}\".")
    raw_models = values.get("models")
    if not isinstance(raw_models, list) or not raw_models:
        raise ManifestError(f"{path}: \"models\" must be a non-empty list.")
    entries = []
    for number, raw in enumerate(raw_models, start=1):
        entries.append(_entry(f"{path}: model {number}", raw))
    keys = [entry.key for entry in entries]
    if len(set(keys)) != len(keys):
        raise ManifestError(f"{path}: model keys must be unique (got {', '.join(keys)}).")
    localizer = values.get("localizer")
    return Manifest(
        models=tuple(entries),
        title=str(values.get("title", "SpineCAD models")),
        demo=bool(values.get("demo", False)),
        evaluation=values.get("evaluation"),
        localizer=None if localizer is None else _entry(f"{path}: the localizer", localizer),
        root=path.resolve().parent,
    )


def write_manifest(manifest: Manifest, path: str | Path) -> None:
    """Write a manifest atomically (paths stay relative to its folder). A localiser the file at ``path`` lists
    already is kept when ``manifest`` names none: the graders' training rewrites the file without knowing of it."""
    localizer = manifest.localizer
    if localizer is None and Path(path).is_file():
        try:
            localizer = read_manifest(path).localizer
        except ManifestError:
            localizer = None
    values = {
        "format": FORMAT,
        "title": manifest.title,
        "demo": manifest.demo,
        "evaluation": manifest.evaluation,
        "models": [_entry_dict(entry) for entry in manifest.models],
    }
    if localizer is not None:
        values["localizer"] = _entry_dict(localizer)
    write_text_atomic(path, json.dumps(values, indent=2) + "\n")


def _entry_dict(entry: ManifestEntry) -> dict:
    return {k: v for k, v in asdict(entry).items() if v is not None}


def _entry(where: str, raw: object) -> ManifestEntry:
    if not isinstance(raw, dict):
        raise ManifestError(f"{where} is not a JSON object.")
    unknown = set(raw) - {"key", "name", "path", "repo_id", "revision"}
    if unknown:
        raise ManifestError(f"{where} has unknown fields: {', '.join(sorted(unknown))}.")
    if not raw.get("key") or not raw.get("name"):
        raise ManifestError(f"{where} needs a \"key\" and a \"name\".")
    if not raw.get("path") and not raw.get("repo_id"):
        raise ManifestError(f"{where} ({raw['name']}) needs a local \"path\" or a Hub \"repo_id\".")
    if raw.get("repo_id") and not raw.get("revision"):
        raise ManifestError(f"{where} ({raw['name']}): a Hub \"repo_id\" needs a pinned \"revision\" (commit id).")
    return ManifestEntry(**{k: (str(v) if v is not None else None) for k, v in raw.items()})
