"""Stage manifests: skip when unchanged, redo on changed settings or inputs, scratch rules."""

import json

import pytest

from minitron_deploy.core.errors import MinitronError
from minitron_deploy.core.files import sha256_file
from minitron_deploy.pipeline.stages import Stage


def make(tmp_path, settings, calls, scratch_kept=None):
    src = tmp_path / "in.txt"

    def run(out):
        calls.append(settings["k"])
        if scratch_kept is not None:
            scratch_kept.append((tmp_path / "scratch").exists())
        out.write_text(src.read_text().upper() + str(settings["k"]))

    return Stage("upper", tmp_path / "out.txt", {"src": src}, settings, run,
                 scratch=(tmp_path / "scratch",))


def test_skip_redo_and_manifest(tmp_path):
    (tmp_path / "in.txt").write_text("abc")
    calls: list = []
    manifest = make(tmp_path, {"k": 1}, calls).execute(log=lambda m: None)
    assert manifest["output_sha256"]["out.txt"] == sha256_file(tmp_path / "out.txt")
    make(tmp_path, {"k": 1}, calls).execute(log=lambda m: None)
    assert calls == [1]
    make(tmp_path, {"k": 2}, calls).execute(log=lambda m: None)
    assert calls == [1, 2] and (tmp_path / "out.txt").read_text() == "ABC2"
    (tmp_path / "in.txt").write_text("xyz!")
    make(tmp_path, {"k": 2}, calls).execute(log=lambda m: None)
    assert calls == [1, 2, 2] and (tmp_path / "out.txt").read_text() == "XYZ!2"
    (tmp_path / "out.txt").write_text("tampered")
    make(tmp_path, {"k": 2}, calls).execute(log=lambda m: None)
    assert len(calls) == 4 and not (tmp_path / ".upper.pending.json").exists()


def test_interrupted_stage_keeps_scratch_only_for_same_settings(tmp_path):
    (tmp_path / "in.txt").write_text("abc")
    stage = make(tmp_path, {"k": 1}, [])
    (tmp_path / ".upper.pending.json").write_text(json.dumps(stage._expected()))
    (tmp_path / "scratch").mkdir()
    seen: list = []
    make(tmp_path, {"k": 1}, [], seen).execute(log=lambda m: None)
    assert seen == [True]
    (tmp_path / ".upper.pending.json").write_text(json.dumps(stage._expected()))
    (tmp_path / "out.txt").unlink()
    make(tmp_path, {"k": 3}, [], seen).execute(log=lambda m: None)
    assert seen == [True, False]


def test_missing_input_and_missing_output(tmp_path):
    with pytest.raises(MinitronError, match="missing input"):
        make(tmp_path, {"k": 1}, []).execute(log=lambda m: None)
    (tmp_path / "in.txt").write_text("abc")
    lazy = Stage("lazy", tmp_path / "never", {}, {}, lambda out: None)
    with pytest.raises(MinitronError, match="without writing"):
        lazy.execute(log=lambda m: None)


def dir_stage(tmp_path, calls):
    def run(out):
        calls.append(out.name)
        out.mkdir()
        (out / "results.json").write_text("{}")

    return Stage("eval", tmp_path / "eval", {}, {}, run)


def test_output_not_ours_is_refused_and_kept(tmp_path):
    (tmp_path / "in.txt").write_text("abc")
    (tmp_path / "out.txt").write_text("a user's file")
    user_dir = tmp_path / "eval"
    user_dir.mkdir()
    (user_dir / "notes.md").write_text("a user's notes")
    calls: list = []
    for stage in (make(tmp_path, {"k": 1}, calls), dir_stage(tmp_path, calls)):
        with pytest.raises(MinitronError, match=f"{stage.output} exists and was not written "
                                                "by minitron.*pick another work dir"):
            stage.execute(log=lambda m: None)
    assert calls == [] and (tmp_path / "out.txt").read_text() == "a user's file"
    assert [p.name for p in user_dir.iterdir()] == ["notes.md"]


def test_empty_dir_is_reused_and_our_interrupted_output_redone(tmp_path):
    calls: list = []
    (tmp_path / "eval").mkdir()
    dir_stage(tmp_path, calls).execute(log=lambda m: None)
    assert calls == ["eval"]
    (tmp_path / "eval.manifest.json").unlink()  # killed after the output, before the manifest
    (tmp_path / ".eval.pending.json").write_text("{}")
    (tmp_path / "eval" / "partial").write_text("")
    dir_stage(tmp_path, calls).execute(log=lambda m: None)
    assert calls == ["eval", "eval"] and not (tmp_path / "eval" / "partial").exists()
