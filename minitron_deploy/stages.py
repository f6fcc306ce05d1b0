"""Resumable pipeline stages with manifests.

Every stage writes its output into its own path under the work dir (atomically, by itself) and
then a manifest ``<work>/<stage>.manifest.json``: inputs with fingerprints, the settings and
their hash, outputs with sha256, timings. A re-run skips a stage whose manifest matches the
current settings and inputs and whose outputs are intact; otherwise the stale output is
removed and the stage runs again, so downstream stages see changed inputs and rerun too.

A stage may keep resumable scratch state (distillation checkpoints): a ``.pending`` file
records the settings and inputs it was started with; an interrupted stage resumes from its
scratch only if those are unchanged, else the scratch is discarded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import MinitronError

MANIFEST_SUFFIX = ".manifest.json"
_HASH_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
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
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Stage:
    """One step: ``run(output)`` must create ``output`` (atomically) from ``inputs``."""

    name: str
    output: Path
    inputs: dict[str, Path]
    settings: dict
    run: Callable[[Path], object]
    scratch: tuple[Path, ...] = ()

    @property
    def manifest_path(self) -> Path:
        return self.output.parent / f"{self.name}{MANIFEST_SUFFIX}"

    @property
    def pending_path(self) -> Path:
        return self.output.parent / f".{self.name}.pending.json"

    def _expected(self) -> dict:
        return {"settings_hash": settings_hash(self.settings),
                "inputs": {k: fingerprint(v) for k, v in self.inputs.items()}}

    def is_complete(self) -> bool:
        """Manifest present, same settings and inputs, outputs still as recorded."""
        if not self.manifest_path.is_file() or not self.output.exists():
            return False
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        expected = self._expected()
        if manifest.get("settings_hash") != expected["settings_hash"]:
            return False
        if manifest.get("input_fingerprints") != expected["inputs"]:
            return False
        return manifest.get("output_fingerprint") == fingerprint(self.output)

    def execute(self, log: Callable[[str], None] = print) -> dict:
        """Run the stage unless complete; returns its manifest."""
        if self.is_complete():
            log(f"[{self.name}] up to date, skipped")
            return json.loads(self.manifest_path.read_text())
        missing = [k for k, v in self.inputs.items() if not v.exists()]
        if missing:
            raise MinitronError(f"stage {self.name}: missing input(s) {', '.join(missing)}")
        expected = self._expected()
        if self.manifest_path.exists():
            self.manifest_path.unlink()
        if self.output.exists():
            log(f"[{self.name}] settings or inputs changed: redoing")
            _remove(self.output)
        if self.pending_path.is_file() and json.loads(self.pending_path.read_text()) != expected:
            for path in self.scratch:  # interrupted with other settings: do not resume
                if path.exists():
                    _remove(path)
        write_json_atomic(self.pending_path, expected)
        log(f"[{self.name}] running")
        started = time.time()
        t0 = time.perf_counter()
        self.run(self.output)
        if not self.output.exists():
            raise MinitronError(f"stage {self.name} finished without writing {self.output}")
        manifest = {"stage": self.name, "settings": self.settings,
                    "settings_hash": expected["settings_hash"],
                    "inputs": {k: str(v.resolve()) for k, v in self.inputs.items()},
                    "input_fingerprints": expected["inputs"],
                    "output": str(self.output.resolve()),
                    "output_sha256": content_hashes(self.output),
                    "output_fingerprint": fingerprint(self.output),
                    "started_unix": started, "seconds": time.perf_counter() - t0}
        write_json_atomic(self.manifest_path, manifest)
        self.pending_path.unlink()
        return manifest


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


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
    return write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
