"""Model specs: a local checkpoint folder, or a Hugging Face Hub id ``org/name[@revision]``
found in (or downloaded into) the Hugging Face cache."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from .errors import MinitronError

#: ``org/name`` or ``org/name@revision`` (a branch, tag or commit).
_HUB_ID = re.compile(r"(?P<repo>\w[\w.-]*/\w[\w.-]*)(?:@(?P<revision>[^\s@]+))?")
#: Repository files no Hugging Face loader here reads (other frameworks, original weights).
_IGNORED = ["original/*", "*.pth", "*.gguf", "*.onnx", "*.onnx_data", "onnx/*", "*.h5",
            "*.msgpack", "*.ot", "*.tflite", "coreml/*"]


def resolve_model(spec: str | Path, only: tuple[str, ...] | None = None) -> Path:
    """The local folder of ``spec``: an existing path as it is (it wins over a Hub id of the
    same spelling); ``org/name[@rev]`` from the Hugging Face cache, downloaded unless
    ``HF_HUB_OFFLINE`` is set, and of it only the files matching ``only`` (e.g.
    ``("config.json",)``) where given. Anything else comes back as a path for the caller to
    refuse."""
    path = Path(spec)
    match = _HUB_ID.fullmatch(str(spec))
    if path.exists() or match is None or not _valid_repo_id(match["repo"]):
        return path
    return _snapshot(match["repo"], match["revision"], hub_offline(), hub_cache(), only)


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids Hub look-ups (read at call time)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "").upper()
    return value in constants.ENV_VARS_TRUE_VALUES or bool(constants.HF_HUB_OFFLINE)


def hub_cache() -> Path:
    """The Hugging Face hub cache folder (``HF_HUB_CACHE``, by default under ``HF_HOME``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser().resolve()


def _valid_repo_id(repo: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _snapshot(repo: str, revision: str | None, offline: bool, cache: Path,
              only: tuple[str, ...] | None = None) -> Path:
    """The snapshot folder of ``repo`` at ``revision`` with the files matching ``only`` (all
    by default), once per process and cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name = repo + (f"@{revision}" if revision else "")
    where = "offline" if offline else "the Hub is unreachable"
    try:
        return Path(snapshot_download(repo, revision=revision, cache_dir=cache,
                                      local_files_only=offline, ignore_patterns=_IGNORED,
                                      allow_patterns=list(only) if only else None))
    except GatedRepoError:
        raise MinitronError(f"model {name} is gated on the Hugging Face Hub: accept its terms "
                            "there and log in (hf auth login)") from None
    except RepositoryNotFoundError:
        raise MinitronError(f"model {name} is neither a local folder nor a Hugging Face Hub "
                            "repository (private ones need hf auth login)") from None
    except RevisionNotFoundError:
        raise MinitronError(f"model {repo} has no revision {revision!r} on the Hugging Face "
                            "Hub") from None
    except IncompleteSnapshotError:
        raise MinitronError(f"model {name} is only partly in the Hugging Face cache "
                            f"({where})") from None
    except LocalEntryNotFoundError:
        raise MinitronError(f"model {name} is neither a local folder nor in the Hugging Face "
                            f"cache ({where})") from None
    except HfHubHTTPError as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise MinitronError(f"cannot fetch model {name} from the Hugging Face Hub: "
                            f"{first}") from None
