"""Local text for calibration, distillation and perplexity: a ``save_to_disk`` folder, a
.txt/.jsonl/.json/.parquet file, or a folder of such files (read recursively, in sorted
order); a .txt file holds one document per line. Tables (datasets folders, JSON records,
Parquet) are read from the column ``text_column``, a ``DatasetDict`` folder from its split
``split``; either missing is refused, naming what there is. Documents stream one at a time, or
are split into train and held-out documents and packed into fixed-length sequences, all
deterministic from a seed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import MinitronError
from ..core.schema import Schema, setting

_SUFFIXES = (".txt", ".text", ".md", ".jsonl", ".json", ".parquet")
_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_ROWS_PER_READ = 1024


@dataclass
class TextSettings(Schema):
    """Where a table's text is: the settings of every command that reads text."""

    text_column: str = setting(
        "text", "column of a datasets folder, JSON records or Parquet file that holds the text "
        "(plain-text files: every line)", modelopt="the ModelOpt mode calibrates with the "
        "caller's forward loop")
    split: str = setting("train", "split of a save_to_disk DatasetDict folder to read",
                         modelopt="the ModelOpt mode calibrates with the caller's forward loop")


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in _SAVED_MARKERS)


def source_files(source: str | Path) -> list[Path]:
    """The files holding ``source``'s text, sorted: every file of a ``save_to_disk`` folder,
    else the .txt/.jsonl/.json/.parquet files of a file or folder (recursively)."""
    path = Path(source)
    if not path.exists():
        raise MinitronError(f"data {path} does not exist")
    if _is_saved_dataset(path):
        return sorted(p for p in path.rglob("*") if p.is_file())
    files = sorted(p for p in (path.rglob("*") if path.is_dir() else [path])
                   if p.is_file() and p.suffix in _SUFFIXES)
    if not files:
        raise MinitronError(f"no .txt/.jsonl/.json/.parquet files in {path}")
    return files


def _check_column(names: list[str], is_text: list[bool], column: str, where: str) -> None:
    """Refuse ``column`` unless it is one of the string columns ``names``."""
    known = f"(columns: {', '.join(names)}); choose the text column with text_column " \
            "(--text-column)"
    if column not in names:
        raise MinitronError(f"no column {column!r} in {where} {known}")
    if not is_text[names.index(column)]:
        raise MinitronError(f"column {column!r} of {where} does not hold text {known}")


def _saved_texts(path: Path, column: str, split: str) -> Iterator[str]:
    import datasets

    ds = datasets.load_from_disk(str(path))  # memory-mapped Arrow, not read into memory
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise MinitronError(f"no split {split!r} in {path} (splits: {', '.join(ds)}); "
                                "choose one with split (--split)")
        ds = ds[split]
    _check_column(list(ds.features), [getattr(f, "dtype", None) in ("string", "large_string")
                                      for f in ds.features.values()], column, str(path))
    for batch in ds.select_columns([column]).iter(batch_size=_ROWS_PER_READ):
        yield from batch[column]


def _line_texts(file: Path) -> Iterator[str]:
    with file.open(encoding="utf-8") as fh:
        for line in fh:
            yield line.rstrip("\n")


def _record_texts(records: Iterator[tuple[int, object]], file: Path,
                  column: str) -> Iterator[str]:
    """The field ``column`` of JSON records (``(line, record)`` pairs), checked on the first
    record."""
    first = True
    for line, record in records:
        if not isinstance(record, dict):
            raise MinitronError(f"cannot read {file}: record {line} is not a JSON object")
        if first:
            _check_column(list(record), [isinstance(v, str) for v in record.values()], column,
                          str(file))
            first = False
        text = record.get(column)
        if isinstance(text, str):
            yield text


def _jsonl_records(file: Path) -> Iterator[tuple[int, object]]:
    with file.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise MinitronError(f"cannot read {file}: line {number}: {exc}") from None


def _json_records(file: Path) -> Iterator[tuple[int, object]]:
    """Rows of a .json file (JSON lines or one array/table), via ``datasets`` streaming."""
    import datasets

    ds = datasets.load_dataset("json", data_files=str(file), split="train", streaming=True)
    yield from enumerate(ds, 1)


def _parquet_texts(file: Path, column: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(file)
    schema = parquet.schema_arrow
    _check_column(schema.names, [pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
                                 for f in schema], column, str(file))
    for batch in parquet.iter_batches(batch_size=_ROWS_PER_READ, columns=[column]):
        yield from batch.column(0).to_pylist()


def _file_texts(file: Path, column: str) -> Iterator[str]:
    if file.suffix == ".parquet":
        return _parquet_texts(file, column)
    if file.suffix == ".jsonl":
        return _record_texts(_jsonl_records(file), file, column)
    if file.suffix == ".json":
        return _record_texts(_json_records(file), file, column)
    return _line_texts(file)


def iter_texts(source: str | Path, text_column: str = "text",
               split: str = "train") -> Iterator[str]:
    """Every non-empty text of a local dataset (see module docstring for formats), one at a
    time in file order; only a read batch is held in memory."""
    path = Path(source)
    readers = ([(path, _saved_texts(path, text_column, split))] if _is_saved_dataset(path)
               else [(file, _file_texts(file, text_column)) for file in source_files(path)])
    found = False
    for where, texts in readers:
        try:
            for text in texts:
                if text and text.strip():
                    found = True
                    yield text
        except MinitronError:
            raise
        except Exception as exc:  # decoders and Arrow raise many types for malformed files
            raise MinitronError(f"cannot read {where}: {type(exc).__name__}: {exc}"
                                .splitlines()[0]) from None
    if not found:
        raise MinitronError(f"data {path} contains no text")


def check_texts(source: str | Path, text_column: str = "text", split: str = "train") -> None:
    """Refuse, before any work, a source whose text cannot be read (missing, without the
    column or split, empty): reads up to its first document."""
    next(iter_texts(source, text_column, split))


def load_texts(source: str | Path, text_column: str = "text", split: str = "train") -> list[str]:
    """Every non-empty text of a local dataset, in memory (see :func:`iter_texts`)."""
    return list(iter_texts(source, text_column, split))


def split_documents(texts: list[str], heldout_fraction: float,
                    seed: int = 0) -> tuple[list[str], list[str]]:
    """Disjoint (train, held-out) document lists; the held-out share is chosen by a seeded
    permutation, so the same data and seed always give the same split."""
    if not 0.0 <= heldout_fraction < 1.0:
        raise MinitronError(f"held-out fraction must be in [0, 1), got {heldout_fraction}")
    if heldout_fraction == 0.0:
        return list(texts), []
    if len(texts) < 2:
        raise MinitronError("a held-out split needs at least two documents")
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    n_held = min(len(texts) - 1, max(1, round(len(texts) * heldout_fraction)))
    held = set(order[:n_held])
    return ([t for i, t in enumerate(texts) if i not in held],
            [t for i, t in enumerate(texts) if i in held])


def check_seq_len(seq_len: int, config) -> None:
    """Refuse sequences longer than the model's context window."""
    limit = getattr(config, "max_position_embeddings", None)
    if seq_len <= 0:
        raise MinitronError(f"sequence length must be positive, got {seq_len}")
    if limit is not None and seq_len > limit:
        raise MinitronError(f"sequence length {seq_len} is longer than the model's context "
                            f"({limit} tokens); lower --seq-len")


def pack_tokens(texts: list[str], tokenizer, seq_len: int, num_samples: int | None = None,
                seed: int = 0) -> torch.Tensor:
    """Shuffle documents (seeded), join with EOS, cut into ``[n, seq_len]`` token ids.

    Returns up to ``num_samples`` sequences (all when None); refuses data shorter than one
    sequence.
    """
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    eos = tokenizer.eos_token_id
    needed = seq_len * num_samples if num_samples is not None else None
    ids: list[int] = []
    for i in order:
        ids.extend(tokenizer(texts[i], add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if needed is not None and len(ids) >= needed:
            break
    n = len(ids) // seq_len if num_samples is None else min(num_samples, len(ids) // seq_len)
    if n == 0:
        raise MinitronError(f"the data has {len(ids)} tokens, fewer than one sequence of "
                            f"{seq_len}; lower --seq-len or add text")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def calibration_batches(source: str | Path, tokenizer, num_samples: int, seq_len: int,
                        batch_size: int, seed: int = 0, text_column: str = "text",
                        split: str = "train") -> list[torch.Tensor]:
    """Calibration token batches ``[batch_size, seq_len]`` (the last may be smaller) of the
    column ``text_column`` (and split ``split``) of ``source``."""
    tokens = pack_tokens(load_texts(source, text_column, split), tokenizer, seq_len,
                         num_samples, seed)
    return list(tokens.split(batch_size))
