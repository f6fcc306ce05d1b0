"""Tables are read from the column and split they are told (``text_column``, ``split``), never
a guessed one: a missing column or split is refused naming what there is, on every command
that reads text."""

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from surfaces import subparser
from tiny_models import CALIB_TEXT, char_tokenizer, save_distill_pair

from minitron_deploy.cli import main
from minitron_deploy.commands.common import settings_from_args
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.core.precision import resolve_device
from minitron_deploy.data.text import load_texts
from minitron_deploy.distill.api import DistillConfig
from minitron_deploy.pruning.settings import PruneSettings
from minitron_deploy.search.settings import SearchSettings

DOCS = CALIB_TEXT.splitlines()
COLUMNS = {"id": [f"doc-{i}" for i in range(len(DOCS))],
           "url": [f"https://example.org/{i}" for i in range(len(DOCS))], "content": DOCS}
CALIB_ARGS = ["--calib-samples", "4", "--seq-len", "32", "--batch-size", "2"]


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """The same documents under ``content`` beside ``id`` and ``url``: a save_to_disk folder,
    a DatasetDict folder with only a validation split, a .jsonl and a .parquet file."""
    root = tmp_path_factory.mktemp("tables")
    table = datasets.Dataset.from_dict(COLUMNS)
    table.save_to_disk(str(root / "saved"))
    datasets.DatasetDict({"validation": table}).save_to_disk(str(root / "dict"))
    rows = [dict(zip(COLUMNS, values)) for values in zip(*COLUMNS.values())]
    (root / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.table({"n": list(range(len(DOCS))), **COLUMNS}), root / "docs.parquet")
    return root


@pytest.mark.parametrize("name", ["saved", "docs.jsonl", "docs.parquet"])
def test_a_table_without_the_column_is_refused_naming_its_columns(tables, name):
    with pytest.raises(MinitronError) as err:
        load_texts(tables / name)
    message = str(err.value)
    assert "\n" not in message and message.startswith("no column 'text' in ")
    assert "(columns: " in message and "id, url, content" in message
    assert "--text-column" in message
    assert load_texts(tables / name, text_column="content") == DOCS


def test_a_column_that_holds_no_text_is_refused(tables):
    with pytest.raises(MinitronError, match=r"^column 'n' of .* does not hold text \(columns: "
                                            r"n, id, url, content\)"):
        load_texts(tables / "docs.parquet", text_column="n")


def test_a_datasetdict_without_the_split_is_refused_naming_its_splits(tables):
    with pytest.raises(MinitronError) as err:
        load_texts(tables / "dict", text_column="content")
    assert str(err.value) == (f"no split 'train' in {tables / 'dict'} (splits: validation); "
                              "choose one with split (--split)")
    assert load_texts(tables / "dict", text_column="content", split="validation") == DOCS


@pytest.mark.parametrize("command, schema", [("prune", PruneSettings), ("search", SearchSettings),
                                             ("distill", DistillConfig)])
def test_the_flags_become_the_settings(command, schema):
    required = {"prune": ["--model", "m", "--out", "o"],
                "search": ["--model", "m", "--out", "o", "--target-params", "0.5"],
                "distill": ["--teacher", "t", "--student", "s", "--data", "d", "--out", "o",
                            "--steps", "1"]}[command]
    parsed = subparser(command).parse_args([*required, "--text-column", "content",
                                            "--split", "validation"])
    settings = settings_from_args(schema, parsed)
    assert (settings.text_column, settings.split) == ("content", "validation")
    default = settings_from_args(schema, subparser(command).parse_args(required))
    assert (default.text_column, default.split) == ("text", "train")


def test_score_reads_the_column_it_is_told(tables, tmp_path, capsys):
    pair = save_distill_pair("llama", tmp_path)
    args = ["score", "--model", str(pair / "teacher"), "--calib", str(tables / "dict"),
            *CALIB_ARGS]
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "a.safetensors")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"minitron: error: no split 'train' in {tables / 'dict'} (splits: validation); "
        "choose one with split (--split)"]
    assert main([*args, "--split", "validation", "--out", str(tmp_path / "b.safetensors")]) == 2
    assert "no column 'text'" in capsys.readouterr().err
    assert main([*args, "--split", "validation", "--text-column", "content", "--out",
                 str(tmp_path / "c.safetensors")]) == 0
    assert (tmp_path / "c.safetensors").is_file()
    assert not (tmp_path / "a.safetensors").exists() and not (tmp_path / "b.safetensors").exists()


def test_distill_trains_on_the_column_it_is_told_and_records_it(tables, tmp_path):
    pair = save_distill_pair("llama", tmp_path)
    args = ["distill", "--teacher", str(pair / "teacher"), "--student", str(pair / "student"),
            "--data", str(tables / "docs.parquet"), "--steps", "1", "--seq-len", "32",
            "--batch-size", "2"]
    assert main([*args, "--out", str(tmp_path / "refused")]) == 2
    assert not (tmp_path / "refused").exists()
    assert main([*args, "--text-column", "content", "--out", str(tmp_path / "kd")]) == 0
    summary = json.loads((tmp_path / "kd" / "minitron" / "distill.json").read_text())
    assert summary["config"]["text_column"] == "content"
    assert summary["config"]["device"] == resolve_device("auto")  # recorded resolved


def test_eval_reads_the_ppl_column_it_is_told(tables, tmp_path):
    pair = save_distill_pair("llama", tmp_path)
    args = ["eval", "--model", str(pair / "teacher"), "--tasks", "ppl", "--ppl-data",
            str(tables / "docs.jsonl"), "--seq-len", "32", "--ppl-seqs", "2"]
    assert main([*args, "--out", str(tmp_path / "refused.json")]) == 2
    assert main([*args, "--text-column", "content", "--out", str(tmp_path / "r.json")]) == 0


def test_export_passes_the_column_and_split_to_its_calibration(monkeypatch, tmp_path):
    import minitron_deploy.export as export_module

    seen = {}
    monkeypatch.setattr(export_module, "export",
                        lambda *a, calib, device, **k: seen.update(calib=calib, device=device)
                        or (_ for _ in ()).throw(MinitronError("stop")))
    assert main(["export", "--model", "m", "--format", "hf", "--out", str(tmp_path / "o"),
                 "--calib", "c", "--text-column", "content", "--split", "validation"]) == 2
    assert (seen["calib"].text_column, seen["calib"].split) == ("content", "validation")
    assert seen["device"] == "auto"  # resolved once, by the API


def test_search_rewrites_its_training_text_when_the_column_changes(tables, tmp_path):
    from minitron_deploy.search.api import _data

    settings = dict(target_params=0.5, seq_len=16, heldout_seqs=1)
    _data(tables / "docs.jsonl", None, char_tokenizer(), SearchSettings(text_column="id",
                                                                        **settings), tmp_path)
    _data(tables / "docs.jsonl", None, char_tokenizer(), SearchSettings(text_column="content",
                                                                        **settings), tmp_path)
    assert set((tmp_path / "train.txt").read_text().splitlines()) < set(DOCS)
