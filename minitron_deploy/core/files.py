"""Files on the ground floor: atomic writes, content hashes and cheap fingerprints.

Every layer (stages, export, eval, assets) writes and identifies files through these, so none
of them needs to import another layer to do it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

_HASH_CHUNK = 1 << 20


def read_json_dict(path: Path) -> dict:
    """The JSON object in ``path``; empty when the file is missing, unreadable or not an
    object (a cache or record that is rebuilt rather than trusted)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def fingerprint(path: Path) -> dict[str, list]:
    """Cheap identity of a file or directory: relative name -> [size, mtime_ns]."""
    root = path if path.is_dir() else path.parent
    return {str(f.relative_to(root)): [f.stat().st_size, f.stat().st_mtime_ns]
            for f in _files(path)}


def content_hashes(path: Path) -> dict[str, str]:
    """Relative name -> sha256 of every file of a file or directory."""
    root = path if path.is_dir() else path.parent
    return {str(f.relative_to(root)): sha256_file(f) for f in _files(path)}


def settings_hash(settings: dict) -> str:
    """sha256 of ``settings`` as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to a temp file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: Path, data: dict) -> Path:
    """:func:`write_text_atomic` of ``data`` as indented JSON."""
    return write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
