"""Local text for calibration, distillation and perplexity: a ``save_to_disk`` folder, a
.txt/.jsonl/.json/.parquet file, or a folder of such files; split into train and held-out
documents, tokenized and packed into fixed-length sequences, all deterministic from a seed."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import MinitronError

_LOADERS = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "json", ".json": "json",
            ".parquet": "parquet"}


def _text_column(dataset) -> str:
    if "text" in dataset.column_names:
        return "text"
    for name, feature in dataset.features.items():
        if getattr(feature, "dtype", None) in ("string", "large_string"):
            return name
    raise MinitronError(f"no text column in the data (columns: {dataset.column_names})")


def load_texts(source: str | Path) -> list[str]:
    """Every non-empty text of a local dataset (see module docstring for formats)."""
    import datasets

    path = Path(source)
    if not path.exists():
        raise MinitronError(f"data {path} does not exist")
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists()
                          or (path / "dataset_dict.json").exists()):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        texts = ds[_text_column(ds)]
    else:
        files = sorted(p for p in (path.rglob("*") if path.is_dir() else [path])
                       if p.is_file() and p.suffix in _LOADERS)
        if not files:
            raise MinitronError(f"no .txt/.jsonl/.json/.parquet files in {path}")
        texts = []
        for file in files:
            try:
                ds = datasets.load_dataset(_LOADERS[file.suffix], data_files=str(file),
                                           split="train")
            except Exception as exc:  # datasets raises many types for malformed files
                raise MinitronError(f"cannot read {file}: {type(exc).__name__}: {exc}".splitlines()[0])
            texts.extend(ds[_text_column(ds)] if len(ds) else [])
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise MinitronError(f"data {path} contains no text")
    return texts


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
                        batch_size: int, seed: int = 0) -> list[torch.Tensor]:
    """Calibration token batches ``[batch_size, seq_len]`` (the last may be smaller)."""
    tokens = pack_tokens(load_texts(source), tokenizer, seq_len, num_samples, seed)
    return list(tokens.split(batch_size))
