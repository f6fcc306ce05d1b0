"""All-or-nothing export directories with a manifest of what was written."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import MinitronError
from ..modeling import check_output_dir
from ..stages import content_hashes, write_json_atomic

MANIFEST = "export_manifest.json"


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path, source_dir: str | Path | None = None) -> Iterator[Path]:
    """Yield a temp dir beside ``out_dir``; rename it to ``out_dir`` only if the block succeeds.

    Refuses an existing non-empty output, the input model itself and unwritable parents before
    anything is created.
    """
    out = check_output_dir(out_dir, source_dir)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise MinitronError(f"cannot write to {out.parent}: {exc.strerror}")
    try:
        yield tmp
        if out.exists():
            out.rmdir()  # check_output_dir guaranteed it is empty
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
