"""Resumable pipeline stages with manifests.

Every stage writes its output into its own path under the work dir (atomically, by itself) and
then a manifest ``<work>/<stage>.manifest.json``: inputs with fingerprints, the settings and
their hash, outputs with sha256, timings. A re-run skips a stage whose manifest matches the
current settings and inputs and whose outputs are intact; otherwise the stale output is
removed and the stage runs again, so downstream stages see changed inputs and rerun too. Only
an output of ours (its manifest or pending file beside it) is removed: anything else at a
stage's path, but an empty directory, is refused.

A stage may keep resumable scratch state (distillation checkpoints): a ``.pending`` file
records the settings and inputs it was started with; an interrupted stage resumes from its
scratch only if those are unchanged, else the scratch is discarded.

Under ``torchrun`` rank 0 alone checks manifests and pending files, removes stale outputs and
writes manifests; its decision (skip or run) is broadcast rather than re-checked by each rank,
so ranks never disagree over what a shared filesystem shows them. A ``collective`` stage
(distillation) runs on every rank; any other runs on rank 0 while the others wait. The work
dir must be on a filesystem every rank sees.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core.dist import on_main_rank
from ..core.errors import MinitronError
from ..core.files import content_hashes, fingerprint, settings_hash, write_json_atomic

MANIFEST_SUFFIX = ".manifest.json"


@dataclass
class Stage:
    """One step: ``run(output)`` must create ``output`` (atomically) from ``inputs``.

    ``collective`` stages are run by every rank (e.g. data-parallel training that writes its
    output from rank 0); the others by rank 0 only.
    """

    name: str
    output: Path
    inputs: dict[str, Path]
    settings: dict
    run: Callable[[Path], object]
    scratch: tuple[Path, ...] = ()
    collective: bool = False

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
        """Run the stage unless complete; returns its manifest on every rank."""
        skipped, plan = on_main_rank(lambda: self._prepare(log))
        if skipped:
            return plan
        if not self.collective:
            return on_main_rank(lambda: self._run_and_record(plan))
        started, t0 = time.time(), time.perf_counter()
        self.run(self.output)
        return on_main_rank(lambda: self._record(plan, started, t0))

    def _prepare(self, log: Callable[[str], None]) -> tuple[bool, dict]:
        """``(True, manifest)`` when up to date; else clear stale output (and scratch of other
        settings), write the pending file and return ``(False, expected)``. An output without
        this stage's manifest or pending file is not ours: refused unless an empty directory."""
        if self.is_complete():
            log(f"[{self.name}] up to date, skipped")
            return True, json.loads(self.manifest_path.read_text())
        missing = [k for k, v in self.inputs.items() if not v.exists()]
        if missing:
            raise MinitronError(f"stage {self.name}: missing input(s) {', '.join(missing)}")
        expected = self._expected()
        if self.output.exists():
            if self.manifest_path.exists() or self.pending_path.exists():
                log(f"[{self.name}] settings or inputs changed: redoing")
            elif not self.output.is_dir() or any(self.output.iterdir()):
                raise MinitronError(f"stage {self.name}: {self.output} exists and was not "
                                    f"written by minitron (no {self.manifest_path.name} "
                                    "beside it); pick another work dir or remove it")
            _remove(self.output)
        if self.manifest_path.exists():
            self.manifest_path.unlink()
        if self.pending_path.is_file() and json.loads(self.pending_path.read_text()) != expected:
            for path in self.scratch:  # interrupted with other settings: do not resume
                if path.exists():
                    _remove(path)
        write_json_atomic(self.pending_path, expected)
        log(f"[{self.name}] running")
        return False, expected

    def _run_and_record(self, expected: dict) -> dict:
        started, t0 = time.time(), time.perf_counter()
        self.run(self.output)
        return self._record(expected, started, t0)

    def _record(self, expected: dict, started: float, t0: float) -> dict:
        """Check the output exists, write the manifest, drop the pending file."""
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
