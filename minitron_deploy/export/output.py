"""All-or-nothing export directories with a manifest of what was written."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import MinitronError
from ..modeling import atomic_dir  # noqa: F401  (re-exported for the export modules)
from ..stages import content_hashes, write_json_atomic

MANIFEST = "export_manifest.json"


def write_manifest(directory: Path, source: str | Path, fmt: str, dtype: str,
                   shape: dict, extra: dict | None = None) -> dict:
    """Write ``export_manifest.json``: source, format, dtype, shape and sha256 of every file."""
    files = {name: digest for name, digest in content_hashes(directory).items() if name != MANIFEST}
    manifest = {"source": str(Path(source).resolve()), "format": fmt, "dtype": dtype,
                "shape": shape, "files": files, **(extra or {})}
    write_json_atomic(directory / MANIFEST, manifest)
    return manifest


def verify_manifest(directory: str | Path) -> dict:
    """Re-hash the files of an export and refuse any that differ from its manifest."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise MinitronError(f"{directory} has no {MANIFEST}; not a minitron export")
    manifest = json.loads(path.read_text())
    actual = {n: d for n, d in content_hashes(directory).items() if n != MANIFEST}
    if actual != manifest["files"]:
        changed = sorted(set(actual.items()) ^ set(manifest["files"].items()))
        raise MinitronError(f"{directory}: files differ from the manifest ({changed[0][0]} ...)")
    return manifest
