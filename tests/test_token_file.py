"""Token files: streamed packing of sharded text, held-out split, reuse, memory, two ranks."""

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tiny_models import char_tokenizer

from minitron_deploy.core.errors import MinitronError
from minitron_deploy.data import tokens
from minitron_deploy.data.text import iter_texts, load_texts
from minitron_deploy.data.tokens import (
    build_token_file,
    heldout_path,
    open_token_file,
    prepare_token_file,
)

SEQ = 16


def documents(prefix: str, n: int) -> list[str]:
    return [f"{prefix} document {i}: {'xyz' * (i % 5)} end." for i in range(n)]


def write_shards(root: Path) -> list[str]:
    """jsonl and parquet shards in nested folders; returns their documents in file order."""
    (root / "b").mkdir(parents=True)
    order = []
    for name in ("a.jsonl", "a.parquet", "b/c.jsonl", "b/d.parquet"):
        docs = documents(name, 12)
        if name.endswith(".jsonl"):
            (root / name).write_text("".join(json.dumps({"id": i, "text": d}) + "\n"
                                             for i, d in enumerate(docs)))
        else:
            pq.write_table(pa.table({"n": list(range(len(docs))), "text": docs}), root / name,
                           row_group_size=5)
        order += docs
    (root / "notes.csv").write_text("ignored")
    return order


def packed(docs: list[str], tokenizer) -> list[int]:
    ids = []
    for doc in docs:
        ids += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return ids


def counting_builds(monkeypatch) -> list[Path]:
    built = []
    real = tokens.build_token_file

    def build(*args, **kwargs):
        built.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(tokens, "build_token_file", build)
    return built


def test_shards_pack_in_file_order_into_whole_sequences(tmp_path):
    tok = char_tokenizer()
    docs = write_shards(tmp_path / "shards")
    assert load_texts(tmp_path / "shards") == list(iter_texts(tmp_path / "shards")) == docs
    ids = packed(docs, tok)
    info = build_token_file(tmp_path / "shards", tok, SEQ, tmp_path / "t.bin", batch_size=7)
    seqs = open_token_file(tmp_path / "t.bin")
    n = len(ids) // SEQ
    assert (info.sequences, info.tokens, info.dtype, info.heldout_path) == (n, n * SEQ, "uint16",
                                                                            None)
    assert (len(seqs), seqs.seq_len, seqs.shape) == (n, SEQ, (n, SEQ))
    assert seqs[torch.arange(n)].flatten().tolist() == ids[: n * SEQ]
    picked = seqs[torch.tensor([4, 0, 4])]
    assert picked.dtype == torch.long and picked.shape == (3, SEQ)
    assert torch.equal(picked[0], seqs[4]) and seqs[[0]].tolist() == [ids[:SEQ]]
    assert torch.cat(list(seqs.split(5))).tolist() == seqs[0:n].tolist()
    assert (tmp_path / "t.bin").stat().st_size == n * SEQ * 2
    meta = json.loads((tmp_path / "t.bin.json").read_text())
    assert (meta["sequences"], meta["tokens"], meta["dtype"], meta["documents"]) == (
        n, n * SEQ, "uint16", len(docs))
    build_token_file(tmp_path / "shards", tok, SEQ, tmp_path / "cap.bin", max_sequences=3)
    assert open_token_file(tmp_path / "cap.bin")[0:3].flatten().tolist() == ids[: 3 * SEQ]


def wide_tokenizer():
    """A character tokenizer whose ids lie above the uint16 range."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1, **{f"<f{i}>": i for i in range(2, 70_000)}}
    vocab.update({chr(c): 70_000 + c for c in range(32, 127)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")


def test_large_vocabularies_use_uint32(tmp_path):
    tok = wide_tokenizer()
    docs = documents("wide", 6)
    (tmp_path / "d.txt").write_text("\n".join(docs))
    info = build_token_file(tmp_path / "d.txt", tok, SEQ, tmp_path / "w.bin")
    seqs = open_token_file(tmp_path / "w.bin")
    assert info.dtype == "uint32" and (tmp_path / "w.bin").stat().st_size == info.tokens * 4
    assert seqs[0:len(seqs)].flatten().tolist() == packed(docs, tok)[: info.tokens]
    assert seqs[0].max() > 65_535


def test_prepare_reuses_an_unchanged_file_and_rebuilds_when_anything_changes(tmp_path,
                                                                              monkeypatch):
    tok = char_tokenizer()
    src = tmp_path / "shards"
    write_shards(src)
    built = counting_builds(monkeypatch)
    path = tmp_path / "cache" / "t.bin"
    kw = dict(heldout_fraction=0.25, seed=3, max_sequences=20, heldout_sequences=4)
    train, held = prepare_token_file(src, tok, SEQ, path, **kw)
    first = train[0:len(train)]
    assert (len(train), len(held), len(built)) == (20, 4, 1)
    again, _ = prepare_token_file(src, tok, SEQ, path, **kw)
    assert len(built) == 1 and torch.equal(again[0:20], first)
    prepare_token_file(src, tok, SEQ, path, **{**kw, "seed": 4})
    assert len(built) == 2
    prepare_token_file(src, tok, SEQ, path, **kw)
    assert len(built) == 3
    with (src / "b" / "c.jsonl").open("a") as fh:
        fh.write(json.dumps({"text": "one more document"}) + "\n")
    prepare_token_file(src, tok, SEQ, path, **kw)
    assert len(built) == 4
    os.utime(src / "a.parquet", ns=(1, 1))
    prepare_token_file(src, tok, SEQ, path, **kw)
    assert len(built) == 5
    with path.open("r+b") as fh:
        fh.truncate(SEQ)
    prepare_token_file(src, tok, SEQ, path, **kw)
    assert len(built) == 6 and path.stat().st_size == 20 * SEQ * 2


def split_docs(seqs) -> list[str]:
    """The complete documents of a character-token file (the last, cut one dropped)."""
    text = "".join(chr(32 + i - 3) if i > 2 else "\0" for i in seqs[0:len(seqs)].flatten().tolist())
    return text.split("\0")[:-1]


def test_heldout_documents_are_disjoint_and_seeded(tmp_path):
    tok = char_tokenizer()
    docs = documents("doc", 300)
    (tmp_path / "d.txt").write_text("\n".join(docs))
    splits = {}
    for seed in (0, 0, 1):
        path = tmp_path / f"s{seed}.bin"
        build_token_file(tmp_path / "d.txt", tok, SEQ, path, heldout_fraction=0.3, seed=seed)
        train, held = split_docs(open_token_file(path)), split_docs(
            open_token_file(heldout_path(path)))
        assert not set(train) & set(held) and set(train) | set(held) <= set(docs)
        assert 40 < len(held) < 150 and len(train) + len(held) >= len(docs) - 2
        splits.setdefault(seed, []).append((path.read_bytes(), heldout_path(path).read_bytes()))
    assert splits[0][0] == splits[0][1] and splits[0][0][1] != splits[1][0][1]
    build_token_file(tmp_path / "d.txt", tok, SEQ, tmp_path / "c.bin", heldout_fraction=0.3,
                     max_sequences=5, heldout_sequences=2)
    assert (len(open_token_file(tmp_path / "c.bin")),
            len(open_token_file(tmp_path / "c.heldout.bin"))) == (5, 2)


def test_refuses_data_shorter_than_a_sequence(tmp_path):
    tok = char_tokenizer()
    (tmp_path / "short.txt").write_text("tiny\n")
    with pytest.raises(MinitronError, match="fewer than one sequence of 64"):
        build_token_file(tmp_path / "short.txt", tok, 64, tmp_path / "s.bin")
    (tmp_path / "d.txt").write_text("\n".join(documents("doc", 40)))
    with pytest.raises(MinitronError, match="held-out documents have"):
        build_token_file(tmp_path / "d.txt", tok, 64, tmp_path / "s.bin", heldout_fraction=0.01)
    assert not list(tmp_path.glob("*.bin*")) and not list(tmp_path.glob(".*"))
    with pytest.raises(MinitronError, match="not a complete token file"):
        open_token_file(tmp_path / "s.bin")


def peak_build_memory(source: Path, out: Path) -> int:
    tok = char_tokenizer()
    tracemalloc.start()
    try:
        build_token_file(source, tok, SEQ, out, batch_size=32)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_building_memory_does_not_grow_with_the_data(tmp_path):
    line = "the quick brown fox jumps over the lazy dog while pruning neurons again and again"
    for n in (250, 2500):  # about 20k and 200k tokens; a batch is 32 lines
        (tmp_path / f"{n}.txt").write_text("\n".join(f"{i} {line}" for i in range(n)))
    peak_build_memory(tmp_path / "250.txt", tmp_path / "warm.bin")
    small = peak_build_memory(tmp_path / "250.txt", tmp_path / "small.bin")
    large = peak_build_memory(tmp_path / "2500.txt", tmp_path / "large.bin")
    assert open_token_file(tmp_path / "large.bin").shape[0] * SEQ > 200_000
    assert large < 2 * small, (small, large)


RANK_SCRIPT = """
import json, sys
import torch.distributed as dist
sys.path.insert(0, sys.argv[1])
from tiny_models import char_tokenizer
from minitron_deploy.data import tokens
from minitron_deploy.distill.trainer import sample_indices

source, path, out = sys.argv[2:5]
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
builds = []
real = tokens.build_token_file
tokens.build_token_file = lambda *a, **k: builds.append(1) or real(*a, **k)
for _ in range(2):  # the second call is a resumed run: it must reuse the file
    seqs, held = tokens.prepare_token_file(source, char_tokenizer(), 16, path, max_sequences=16,
                                           heldout_fraction=0.2, heldout_sequences=2, seed=5)
micro, accum = 2, 2
steps = len(seqs) // (micro * accum * world)
read = []
for step in range(2 * steps):  # two epochs
    for k in range(accum):
        first = ((step * accum + k) * world + rank) * micro
        idx = sample_indices(len(seqs), first, micro, 5)
        read.append({"step": step, "idx": idx.tolist(), "ids": seqs[idx].tolist()})
json.dump({"builds": len(builds), "read": read, "held": len(held)}, open(out % rank, "w"))
dist.destroy_process_group()
"""


def test_two_ranks_build_once_and_read_each_sequence_once_per_epoch(tmp_path):
    write_shards(tmp_path / "shards")
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", str(script),
         str(Path(__file__).parent), str(tmp_path / "shards"), str(tmp_path / "t.bin"),
         str(tmp_path / "rank%d.json")], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["builds"] for r in ranks] == [1, 0] and [r["held"] for r in ranks] == [2, 2]
    rows = open_token_file(tmp_path / "t.bin")[0:16].tolist()
    for epoch in (0, 1):
        seen = [(i, ids) for r in ranks for batch in r["read"] if batch["step"] // 2 == epoch
                for i, ids in zip(batch["idx"], batch["ids"])]
        assert sorted(i for i, _ in seen) == list(range(16))
        assert all(rows[i] == ids for i, ids in seen)
        assert sorted(ids for _, ids in seen) == sorted(rows)
    assert np.array_equal(np.fromfile(tmp_path / "t.bin", dtype=np.uint16),
                          np.array(rows).flatten())
