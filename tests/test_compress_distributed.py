"""``minitron compress`` under ``torchrun``: rank 0 prunes, evaluates and writes every manifest
while all ranks distil; a killed two-rank run resumes to the single-process student; a failure
on rank 0 ends every rank with one line instead of a hang.

Run as a script (``torchrun ... tests/test_compress_distributed.py compress ...``) this file is
the minitron CLI with spies: every atomic file write and training step is logged to
``SPY_LOG`` with the rank that made it, the rank-0 eval stage logs the world size it sees,
and ``SPY_KILL_AT=N`` terminates the whole job one step after checkpoint N."""

import json
import os
import subprocess
import sys

import pytest

STEPS, KILL_AT = 12, 8


def _recipe(tmp_path, teacher) -> str:
    from tiny_models import CALIB_TEXT

    (tmp_path / "train.txt").write_text(CALIB_TEXT)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
name: ddp
teacher: {teacher}
data: {tmp_path / 'train.txt'}
heldout: {tmp_path / 'train.txt'}
prune: {{ffn_hidden_size: 48, calib_samples: 8, seq_len: 32, batch_size: 4}}
distill: {{steps: {STEPS}, seq_len: 32, batch_size: 4, lr: 3.0e-3, checkpoint_every: 4,
           precision: fp32}}
eval: {{tasks: [ppl], seq_len: 32, ppl_seqs: 2}}
""")
    return str(recipe)


def _torchrun(args: list[str], timeout: float = 150, **env) -> subprocess.CompletedProcess:
    """Two CPU ranks on a free port; a hang fails the test (torchrun stops its workers)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", *args]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate()
        pytest.fail(f"torchrun hung for {timeout}s: {err[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_killed_two_rank_compress_resumes_to_the_single_process_student(tmp_path):
    """Two ranks of micro-batch 2 equal one process of batch 4. The two-rank run is killed
    after a checkpoint and rerun: prune is skipped, distillation continues from the
    checkpoint, every manifest is written once, by rank 0, and a rank-0 stage sees a world of
    one."""
    from safetensors.torch import load_file
    from tiny_models import save_tiny_checkpoint
    from torch.testing import assert_close

    from minitron_deploy.cli import main

    save_tiny_checkpoint("llama", tmp_path / "teacher")
    recipe = _recipe(tmp_path, tmp_path / "teacher")
    assert main(["compress", "--recipe", recipe, "--work-dir", str(tmp_path / "single")]) == 0

    work = tmp_path / "ddp"
    args = [__file__, "compress", "--recipe", recipe, "--work-dir", str(work),
            "--set", "distill.batch_size=2"]
    first = _torchrun(args, SPY_LOG=str(tmp_path / "killed.log"), SPY_KILL_AT=str(KILL_AT))
    assert first.returncode != 0
    assert (work / "prune.manifest.json").is_file() and not (work / "distilled").exists()
    done = _torchrun(args, SPY_LOG=str(tmp_path / "resumed.log"))
    assert done.returncode == 0, done.stderr[-30000:]
    assert done.stdout.count("[prune] up to date, skipped") == 1
    assert done.stdout.count("| model | weights on disk |") == 1

    a = load_file(str(tmp_path / "single" / "distilled" / "model.safetensors"))
    b = load_file(str(work / "distilled" / "model.safetensors"))
    for k in a:
        assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    loss = lambda w: [json.loads(x)["loss"] for x in  # noqa: E731
                      (w / "distilled" / "minitron" / "train_log.jsonl").read_text().splitlines()]
    assert loss(work) == pytest.approx(loss(tmp_path / "single"), rel=1e-5)

    killed, resumed = ([line.split(maxsplit=2) for line in
                        (tmp_path / f"{run}.log").read_text().splitlines()]
                       for run in ("killed", "resumed"))
    steps = lambda events: [int(e[2]) for e in events if e[1] == "step"]  # noqa: E731
    assert steps(killed) == list(range(1, KILL_AT + 2))  # killed after one more step
    assert steps(resumed) == list(range(KILL_AT + 1, STEPS + 1))
    writes = [(rank, path) for rank, kind, path in killed + resumed if kind == "write"]
    assert {rank for rank, _ in writes} == {"0"}
    manifests = sorted(os.path.basename(p) for _, p in writes if p.endswith(".manifest.json"))
    assert manifests == ["distill.manifest.json", "eval.manifest.json", "prune.manifest.json"]
    assert [(rank, world) for rank, kind, world in resumed if kind == "world"] == [("0", "1")]
    assert not [p for p in work.rglob(".*")]  # no pending file, scratch or temp file left


def test_failure_on_rank0_ends_every_rank_with_one_line(tmp_path):
    """Rank 1 waits for rank 0's prune stage, which refuses a missing teacher: both ranks end
    with the error (rank 0's own line may be cut short by torchrun stopping it)."""
    recipe = _recipe(tmp_path, tmp_path / "no-such-teacher")
    done = _torchrun(["-m", "minitron_deploy.cli", "compress", "--recipe", recipe,
                      "--work-dir", str(tmp_path / "work")], timeout=90)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("minitron: error:")]
    assert "minitron: error: rank 0 failed: stage prune: missing input(s) teacher" in errors
    assert len(errors) <= 2 and all("missing input(s) teacher" in e for e in errors)
    assert "minitron_deploy/" not in done.stderr  # no worker traceback


def _spied_cli() -> int:
    """The minitron CLI, logging writes and steps to ``SPY_LOG``; see the module docstring."""
    import signal
    import time

    import minitron_deploy.core.files as files
    from minitron_deploy.core.dist import distributed_env

    rank, kill_at = os.environ["RANK"], int(os.environ.get("SPY_KILL_AT", "0"))

    def note(kind: str, what) -> None:
        with open(os.environ["SPY_LOG"], "a") as fh:
            fh.write(f"{rank} {kind} {what}\n")

    write_text_atomic = files.write_text_atomic

    def spy_write(path, text):
        note("write", path)
        return write_text_atomic(path, text)

    files.write_text_atomic = spy_write
    import minitron_deploy.pipeline.run as pipeline

    distill = pipeline.distill

    def on_step(record: dict) -> None:
        note("step", record["step"])
        if kill_at and record["step"] == kill_at + 1:  # checkpoint kill_at is complete
            os.kill(os.getppid(), signal.SIGTERM)  # torchrun stops every worker
            time.sleep(600)

    pipeline.distill = lambda *a, **kw: distill(*a, on_step=on_step, **kw)
    eval_stage = pipeline._eval_stage

    def viewed_eval(*args):
        note("world", distributed_env().world)
        return eval_stage(*args)

    pipeline._eval_stage = viewed_eval
    from minitron_deploy.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(_spied_cli())
