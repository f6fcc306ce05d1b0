"""All-or-nothing export directories with a manifest of what was written."""

from __future__ import annotations

import json
from pathlib import Path

from ..arch.modeling import atomic_dir  # noqa: F401  (re-exported for the export modules)
from ..core.artifacts import ARTIFACTS_DIR, artifact_path
from ..core.artifacts import EXPORT_MANIFEST as MANIFEST
from ..core.errors import MinitronError
from ..core.files import content_hashes, write_json_atomic


def write_manifest(directory: Path, source: str | Path, fmt: str, dtype: str,
                   shape: dict, extra: dict | None = None) -> dict:
    """Write ``minitron/export_manifest.json``: source, format, dtype, shape and sha256 of every
    other file."""
    path = artifact_path(directory, MANIFEST)
    files = _hashes(directory, path)
    manifest = {"source": str(Path(source).resolve()), "format": fmt, "dtype": dtype,
                "shape": shape, "files": files, **(extra or {})}
    path.parent.mkdir(exist_ok=True)
    write_json_atomic(path, manifest)
    return manifest


def read_manifest(directory: str | Path) -> dict:
    """The manifest of an export, refused when there is none."""
    path = artifact_path(directory, MANIFEST)
    if not path.is_file():
        raise MinitronError(f"{directory} has no {ARTIFACTS_DIR}/{MANIFEST}; not a minitron export")
    return json.loads(path.read_text())


def verify_manifest(directory: str | Path) -> dict:
    """Re-hash the files of an export and refuse any that differ from its manifest."""
    manifest = read_manifest(directory)
    actual = _hashes(Path(directory), artifact_path(directory, MANIFEST))
    if actual != manifest["files"]:
        changed = sorted(set(actual.items()) ^ set(manifest["files"].items()))
        raise MinitronError(f"{directory}: files differ from the manifest ({changed[0][0]} ...)")
    return manifest


def _hashes(directory: Path, manifest: Path) -> dict[str, str]:
    skip = str(manifest.relative_to(directory))
    return {name: digest for name, digest in content_hashes(directory).items() if name != skip}
