"""Token files: documents streamed from local text, tokenized in batches and packed into a
memory-mapped binary file of fixed-length sequences, so memory stays O(batch) at any token
budget.

Format: ``<path>`` holds ``sequences * seq_len`` little-endian token ids (uint16 when the
vocabulary fits, else uint32), sequence after sequence; ``<path>.json`` describes it (dtype,
seq_len, sequences, tokens, documents, split, the sha256 of the file's bytes, hashed as they
are written, and the settings it was built from: source fingerprint, tokenizer, seed, held-out
settings). Held-out documents go to a second pair of files, ``<stem>.heldout<suffix>`` and its
``.json``.

Packing follows stream order: documents are not shuffled before packing (that would need them
all in memory). Training still visits sequences in random order: the trainer's
``sample_indices`` draws a fresh seeded permutation of the sequences every epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..core.dist import on_main_rank
from ..core.errors import MinitronError
from .text import iter_texts, source_files

FORMAT = 2  # 2: the sidecar records the file's sha256
_BATCH_CHARS = 1 << 22


@dataclass(frozen=True)
class TokenFileInfo:
    """What a build wrote: the train file and the held-out file (None without a split)."""

    path: Path
    heldout_path: Path | None
    dtype: str
    seq_len: int
    sequences: int
    heldout_sequences: int

    @property
    def tokens(self) -> int:
        return self.sequences * self.seq_len


class TokenSequences:
    """``[n, seq_len]`` token ids of a token file, memory-mapped: indexing reads only the
    requested sequences and returns a ``torch.long`` tensor. ``sha256`` is the file's, as
    recorded when it was built."""

    def __init__(self, path: Path, dtype: str, seq_len: int, sequences: int,
                 sha256: str) -> None:
        self.path = Path(path)
        self.seq_len = seq_len
        self.sha256 = sha256
        self._ids = np.memmap(self.path, dtype=np.dtype(dtype), mode="r",
                              shape=(sequences, seq_len))

    @property
    def shape(self) -> tuple[int, int]:
        return self._ids.shape

    def __len__(self) -> int:
        return self._ids.shape[0]

    def __getitem__(self, index: int | slice | list[int] | torch.Tensor) -> torch.Tensor:
        """Sequence ``index`` as ``[seq_len]``, or sequences (slice, list, LongTensor) as
        ``[k, seq_len]``."""
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        return torch.from_numpy(np.asarray(self._ids[index], dtype=np.int64))

    def split(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Consecutive batches of ``batch_size`` sequences (the last may be smaller)."""
        for start in range(0, len(self), batch_size):
            yield self[start:start + batch_size]


def heldout_path(path: str | Path) -> Path:
    """Where the held-out sequences of the token file ``path`` live."""
    path = Path(path)
    return path.with_name(f"{path.stem}.heldout{path.suffix}")


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def open_token_file(path: str | Path) -> TokenSequences:
    """Memory-map a token file written by :func:`build_token_file`."""
    path = Path(path)
    meta = _read_meta(path)
    if meta is None:
        raise MinitronError(f"{path} is not a complete token file (missing or unreadable "
                            f"{_sidecar(path).name}); build it again")
    return TokenSequences(path, meta["dtype"], meta["seq_len"], meta["sequences"], meta["sha256"])


def _read_meta(path: Path) -> dict | None:
    """The sidecar of ``path`` when it and the token file are complete, else None."""
    try:
        meta = json.loads(_sidecar(path).read_text())
        complete = (meta["format"] == FORMAT and path.stat().st_size
                    == meta["tokens"] * np.dtype(meta["dtype"]).itemsize)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta if complete else None


def _fingerprint(source: str | Path) -> dict:
    """Names (relative to the source), sizes and modification times of the source files."""
    root = Path(source)
    digest = hashlib.sha256()
    files = source_files(root)
    for file in files:
        stat = file.stat()
        name = file.name if file == root else file.relative_to(root).as_posix()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return {"files": len(files), "sha256": digest.hexdigest()}


def _settings(source, tokenizer, seq_len: int, max_sequences: int | None,
              heldout_fraction: float, seed: int, heldout_sequences: int | None,
              text_column: str, split: str) -> dict:
    if seq_len <= 0:
        raise MinitronError(f"sequence length must be positive, got {seq_len}")
    if not 0.0 <= heldout_fraction < 1.0:
        raise MinitronError(f"held-out fraction must be in [0, 1), got {heldout_fraction}")
    for name, value in (("max_sequences", max_sequences), ("heldout_sequences", heldout_sequences)):
        if value is not None and value <= 0:
            raise MinitronError(f"{name} must be positive, got {value}")
    return {"source": _fingerprint(source), "text_column": text_column, "split": split,
            "tokenizer": {"name": tokenizer.name_or_path, "class": type(tokenizer).__name__,
                          "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id},
            "seq_len": seq_len, "max_sequences": max_sequences, "seed": seed,
            "heldout_fraction": heldout_fraction, "heldout_sequences": heldout_sequences}


def _is_heldout(seed: int, index: int, fraction: float) -> bool:
    """Whether document ``index`` is held out: a seeded hash, decided one document at a time."""
    if fraction <= 0.0:
        return False
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") < fraction * 2**64


class _Packer:
    """Appends token ids to an open file in whole sequences, up to ``cap`` sequences."""

    def __init__(self, fh, dtype: np.dtype, seq_len: int, cap: int | None) -> None:
        self.fh, self.dtype, self.seq_len, self.cap = fh, dtype, seq_len, cap
        self.pending = np.empty(0, dtype=dtype)
        self.sequences = self.seen = self.documents = 0
        self.digest = hashlib.sha256()

    @property
    def full(self) -> bool:
        return self.cap is not None and self.sequences >= self.cap

    def add(self, docs: list[list[int]]) -> int:
        """Pack documents' ids (EOS included); returns the number of tokens written."""
        ids = np.fromiter(itertools.chain.from_iterable(docs), dtype=np.int64)
        if len(ids) and int(ids.max()) > np.iinfo(self.dtype).max:
            raise MinitronError(f"token id {int(ids.max())} does not fit {self.dtype.name}; "
                                "the tokenizer reports a smaller vocabulary than it uses")
        self.seen += len(ids)
        self.documents += len(docs)
        ids = np.concatenate([self.pending, ids.astype(self.dtype)])
        n = len(ids) // self.seq_len
        if self.cap is not None:
            n = min(n, self.cap - self.sequences)
        packed = ids[: n * self.seq_len]
        packed.tofile(self.fh)
        self.digest.update(packed)
        self.sequences += n
        self.pending = ids[n * self.seq_len:] if not self.full else ids[:0]
        return n * self.seq_len


def _batches(texts: Iterator[str], size: int) -> Iterator[list[str]]:
    """Lists of up to ``size`` documents and about ``_BATCH_CHARS`` characters."""
    batch: list[str] = []
    chars = 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if len(batch) >= size or chars >= _BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _pack(texts: Iterator[str], tokenizer, train: _Packer, heldout: _Packer, seed: int,
          fraction: float, batch_size: int, bar: tqdm) -> None:
    """Tokenize documents a batch at a time into the train or held-out packer until both are
    full or the documents run out."""
    eos = tokenizer.eos_token_id
    index = 0
    for batch in _batches(texts, batch_size):
        sides = [heldout if _is_heldout(seed, i, fraction) else train
                 for i in range(index, index + len(batch))]
        index += len(batch)
        wanted = [(text, side) for text, side in zip(batch, sides) if not side.full]
        ids = tokenizer([text for text, _ in wanted], add_special_tokens=False,
                        return_attention_mask=False)["input_ids"] if wanted else []
        if eos is not None:
            ids = [[*doc, eos] for doc in ids]
        bar.update(train.add([d for d, (_, side) in zip(ids, wanted) if side is train]))
        heldout.add([d for d, (_, side) in zip(ids, wanted) if side is heldout])
        bar.set_postfix(heldout=heldout.sequences * heldout.seq_len)
        if train.full and heldout.full:
            return


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def build_token_file(source: str | Path, tokenizer, seq_len: int, path: str | Path, *,
                     max_sequences: int | None = None, heldout_fraction: float = 0.0,
                     seed: int = 0, heldout_sequences: int | None = None,
                     batch_size: int = 1024, text_column: str = "text",
                     split: str = "train") -> TokenFileInfo:
    """Tokenize ``source`` into the token file ``path`` (see module docstring), replacing it.

    Documents are read in stream order and tokenized ``batch_size`` at a time, each followed
    by EOS; a seeded hash of (``seed``, document index) holds out about ``heldout_fraction``
    of them for :func:`heldout_path`. Stops once ``max_sequences`` train and
    ``heldout_sequences`` held-out sequences are written (None: all the data). Refuses data
    with fewer tokens than one sequence. Tables are read from ``text_column`` (and a
    DatasetDict folder from ``split``, see ``text.py``).
    """
    settings = _settings(source, tokenizer, seq_len, max_sequences, heldout_fraction, seed,
                         heldout_sequences, text_column, split)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(np.uint16 if len(tokenizer) <= 1 << 16 else np.uint32)
    held = heldout_path(path) if heldout_fraction > 0 else None
    targets = [path] + ([held] if held else [])
    temps = [p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in targets]
    try:
        with contextlib.ExitStack() as stack:
            files = [stack.enter_context(open(temp, "wb")) for temp in temps]
            bar = stack.enter_context(tqdm(total=max_sequences * seq_len if max_sequences else None,
                                           unit="tok", unit_scale=True, desc="tokenize",
                                           dynamic_ncols=True))
            train = _Packer(files[0], dtype, seq_len, max_sequences)
            heldout = _Packer(files[-1], dtype, seq_len, heldout_sequences if held else 0)
            _pack(iter_texts(source, text_column, split), tokenizer, train, heldout, seed,
                  heldout_fraction, batch_size, bar)
        if train.sequences == 0:
            raise MinitronError(f"the data has {train.seen} tokens, fewer than one sequence of "
                                f"{seq_len}; lower --seq-len or add text")
        if held and heldout.sequences == 0:
            raise MinitronError(f"the held-out documents have {heldout.seen} tokens, fewer than "
                                f"one sequence of {seq_len}; raise the held-out fraction, lower "
                                "--seq-len or add text")
        for target in targets:
            _sidecar(target).unlink(missing_ok=True)
        for temp, target in zip(temps, targets):
            os.replace(temp, target)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
    parts = [(held, "heldout", heldout)] if held else []
    for target, split, packer in parts + [(path, "train", train)]:
        _write_json(_sidecar(target), {
            "format": FORMAT, "split": split, "dtype": dtype.name, "seq_len": seq_len,
            "sequences": packer.sequences, "tokens": packer.sequences * seq_len,
            "documents": packer.documents, "heldout": held.name if held else None,
            "sha256": packer.digest.hexdigest(),
            "settings": settings})
    return TokenFileInfo(path, held, dtype.name, seq_len, train.sequences, heldout.sequences)


def prepare_token_file(source: str | Path, tokenizer, seq_len: int, path: str | Path, *,
                       max_sequences: int | None = None, heldout_fraction: float = 0.0,
                       seed: int = 0, heldout_sequences: int | None = None,
                       text_column: str = "text", split: str = "train",
                       ) -> tuple[TokenSequences, TokenSequences | None]:
    """Train and held-out sequences (None without a split) of the token file ``path``,
    built once for all ranks.

    Rank 0 reuses the file when its sidecar records the same source fingerprint, tokenizer
    and settings, else builds it, however long that takes, while the other ranks wait
    (``core.dist.on_main_rank``); then every rank opens the memmap (``path`` must be visible to
    all ranks).
    """
    path = Path(path)
    settings = _settings(source, tokenizer, seq_len, max_sequences, heldout_fraction, seed,
                         heldout_sequences, text_column, split)

    def build() -> None:
        if _current(path, settings) is None:
            build_token_file(source, tokenizer, seq_len, path, max_sequences=max_sequences,
                             heldout_fraction=heldout_fraction, seed=seed,
                             heldout_sequences=heldout_sequences, text_column=text_column,
                             split=split)

    on_main_rank(build)
    meta = _current(path, settings)
    if meta is None:
        raise MinitronError(f"rank 0 did not build the token file {path}; see its error")
    held = heldout_path(path) if meta["heldout"] else None
    return open_token_file(path), open_token_file(held) if held else None


def _current(path: Path, settings: dict) -> dict | None:
    """The sidecar of a complete token file built with ``settings`` (held-out file too)."""
    meta = _read_meta(path)
    if meta is None or meta["settings"] != settings:
        return None
    if meta["heldout"] and _read_meta(heldout_path(path)) is None:
        return None
    return meta
