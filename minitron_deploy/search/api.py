"""``search_student()``: choose the pruned student by search instead of by a rule.

Candidates (``candidates.py``) are the aligned shapes within the pruning bounds, each in every
precision of ``schemes``, that meet the goal; every shape is pruned from one importance
artifact, ranked by held-out loss right after pruning, and the best ``candidates`` shapes again
after a short distillation (or by a task's accuracy). Losses are the 16-bit student's: a
shape's precisions share them (quantization error is not measured), and the chosen shape is
deployed in the least compressed of its precisions that meets the goal.
The work (scores, per-candidate results, distillation checkpoints) lives in ``.<out>.partial``
beside the output, so a re-run with the same settings resumes; the output folder appears only
at the end: the chosen shape pruned by :func:`~minitron_deploy.pruning.api.prune` from those scores
(a stock Hugging Face checkpoint) with the search report in its ``minitron/`` subfolder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import fmean

import torch
from tqdm.auto import tqdm

from ..arch.modeling import atomic_dir, check_output_dir, load_config, load_model
from ..arch.quantized import refuse_quantized
from ..core.align import Alignment
from ..core.artifacts import ARTIFACTS_DIR, SCORES
from ..core.errors import MinitronError
from ..core.files import settings_hash, sha256_file, write_text_atomic
from ..core.hub import resolve_model
from ..core.precision import resolve_device, resolve_precision
from ..data.text import (
    calibration_batches,
    check_seq_len,
    check_texts,
    load_texts,
    pack_tokens,
    split_documents,
)
from ..distill.api import work_dir_for
from ..importance.scores import ImportanceScores
from ..pruning.api import prune
from ..pruning.scoring import score_model
from ..pruning.settings import PruneSettings
from ..pruning.target import TargetSpec, resolve_target
from .candidates import Candidate, find_candidates, shape_representatives
from .goal import Goal
from .predict import Predictor
from .rank import (
    ResultCache,
    heldout_losses,
    paired_gap,
    pruned_copy,
    rank_after_pruning,
    shape_spec,
    short_kd,
    task_metric,
)
from .report import ranked_stage, write_report
from .settings import SearchSettings
from .space import Student

CACHE_DIR = "search"
#: Share of the calibration documents held out when no held-out text is given.
HELDOUT_FRACTION = 0.1


@dataclass
class SearchResult:
    """The output folder (None for a dry run), the report and the chosen candidate's key."""

    out: Path | None
    report: dict
    chosen: str | None


@dataclass
class SearchPlan:
    """Candidates and predictions, from the config alone."""

    source: Student
    source_params: int
    source_active_params: int
    goal: Goal
    candidates: list[Candidate]
    rule: dict | None


def plan_search(config, settings: SearchSettings) -> SearchPlan:
    """The candidates meeting the goal (no weights loaded) and the rule's shape for a
    parameter goal."""
    predictor = Predictor(config, settings.deployment())
    source = predictor.predict(predictor.source)
    goal = settings.goal().resolved(source)
    if goal.kind in ("params", "active_params") and goal.value >= goal.measure(source):
        raise MinitronError(f"target of {goal.value:,.0f} {goal.kind.replace('_', ' ')} is not "
                            f"smaller than the source's ({goal.measure(source):,.0f})")
    candidates = find_candidates(config, goal, predictor, settings.bounds(), settings.align,
                                 settings.max_candidates, settings.scheme_list)
    return SearchPlan(predictor.source, source.params, source.active_params, goal, candidates,
                      _rule(config, goal, settings.align, predictor))


def _rule(config, goal: Goal, align: Alignment, predictor: Predictor) -> dict | None:
    """The student the ``--target-params`` (``--target-active-params``) rule picks for a
    parameter goal (for comparison)."""
    if goal.kind not in ("params", "active_params"):
        return None
    try:
        target = resolve_target(config, TargetSpec(**{f"target_{goal.kind}": goal.value},
                                                   align=align))
    except MinitronError:
        return None
    student = Student(target.shape, target.experts)
    return {"shape": student.as_dict(), **asdict(predictor.predict(student))}


def search_student(model: str | Path, out: str | Path, settings: SearchSettings | None = None,
                   *, calib: str | Path | None = None, heldout: str | Path | None = None,
                   device: str = "auto", dtype: str = "auto", dry_run: bool = False,
                   **overrides) -> SearchResult:
    """Search the student of ``model`` (a folder or Hub id); write the chosen pruned model to
    ``out`` (a dry run writes the candidates' predictions and config-only folders instead,
    without loading weights).

    ``settings`` and ``overrides`` (any of :class:`SearchSettings`' fields by name, e.g.
    ``target_params=0.5, candidates=3``) make the settings, checked by the schema. Without
    ``heldout`` text, 10% of the ``calib`` documents are held out for the loss (and kept out
    of scoring and distillation). Tables are read from ``settings.text_column`` (and
    ``settings.split`` of a DatasetDict folder), ``calib`` and ``heldout`` alike; ``device``
    "auto" is CUDA when a GPU is visible, else the CPU."""
    settings = SearchSettings.make(settings, **overrides)
    device = resolve_device(device)
    model_dir = resolve_model(model)
    refuse_quantized("search", model=model_dir)
    config = load_config(model_dir)
    plan = plan_search(config, settings)
    out = check_output_dir(out, model_dir)
    if dry_run:
        return _dry_run(config, plan, settings, model_dir, out)
    if calib is None or not Path(calib).exists():
        raise MinitronError(f"calibration data {calib} does not exist" if calib
                            else "give calibration data (--calib)")
    if heldout is not None and not Path(heldout).exists():
        raise MinitronError(f"held-out data {heldout} does not exist")
    for source in filter(None, (calib, heldout)):
        check_texts(source, settings.text_column, settings.split)
    check_seq_len(settings.seq_len, config)
    dtype = resolve_precision(device, dtype)
    work = work_dir_for(out)
    with _discarded_unless_resumable(work):
        return _search(model_dir, out, work, plan, settings, calib, heldout, device, dtype)


@contextlib.contextmanager
def _discarded_unless_resumable(work: Path):
    """Create ``work``; on failure remove it again if this run created it and it holds nothing
    to resume from (no scores, no candidate results), so a refusal leaves nothing behind."""
    fresh = not work.exists()
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if fresh and not (work / SCORES).exists() and not any((work / CACHE_DIR).glob("*.json")):
            shutil.rmtree(work, ignore_errors=True)
        raise


def _search(model_dir: Path, out: Path, work: Path, plan: SearchPlan, settings: SearchSettings,
            calib, heldout, device: str, dtype: str) -> SearchResult:
    """Score once, rank every candidate after pruning, distill the best, write the winner."""
    teacher, tokenizer = load_model(model_dir, dtype=dtype, device=device)
    if tokenizer is None:
        raise MinitronError(f"{model_dir} has no tokenizer to tokenize the data")
    train_text, held = _data(calib, heldout, tokenizer, settings, work)
    metric = None if settings.rank_task is None else task_metric(
        settings.rank_task, settings.rank_task_limit, tokenizer, settings.batch_size)
    scores_path = _scores(teacher, tokenizer, model_dir, train_text, plan, settings, work)
    kd = settings.kd_config(device, dtype)
    cache = ResultCache(work / CACHE_DIR, {
        "model": str(model_dir), "scores": sha256_file(scores_path), "dtype": dtype,
        "heldout": held.tolist(), "depth_metric": settings.depth_metric, "kd": asdict(kd),
        "task": settings.rank_task, "task_limit": settings.rank_task_limit})
    teacher_scores = ImportanceScores.load(scores_path)
    order, _ = rank_after_pruning(teacher, teacher_scores, shape_representatives(plan.candidates),
                                  settings.depth_metric,
                                  lambda m: heldout_losses(m, held, settings.batch_size), cache)
    results = {c.shape_key: cache.get(c.shape_key) for c in order}
    if settings.rank_by != "loss":
        for c in tqdm(order[:settings.candidates], desc="short distillation", unit="candidate"):
            key = c.shape_key
            if "loss_kd" not in results[key] or (metric and "task" not in results[key]):
                student = short_kd(model_dir, pruned_copy(teacher, teacher_scores, c,
                                                          settings.depth_metric),
                                   train_text, work / "kd" / key, kd)
                per_seq = heldout_losses(student, held, settings.batch_size)
                values = {"loss_kd": fmean(per_seq), "loss_kd_seqs": per_seq}
                if metric is not None:
                    values["task"] = metric(student)
                results[key] = cache.update(key, **values)
    best = _best(order, results, settings)
    chosen = max((c for c in plan.candidates if c.student == best.student),
                 key=lambda c: c.prediction.weight_bytes)
    return _finish(model_dir, out, work, plan, settings, results, chosen, scores_path, device,
                   dtype)


def _data(calib, heldout, tokenizer, settings: SearchSettings, work: Path
          ) -> tuple[Path, torch.Tensor]:
    """The scoring and distillation text, and the held-out sequences (a split of the
    calibration documents when no held-out data is given)."""
    if heldout is not None:
        texts = load_texts(heldout, settings.text_column, settings.split)
        train = Path(calib)
    else:
        kept, held_docs = split_documents(load_texts(calib, settings.text_column, settings.split),
                                          HELDOUT_FRACTION, settings.seed)
        train = work / "train.txt"
        text = "\n".join(t.replace("\n", " ") for t in kept) + "\n"
        if not train.is_file() or train.read_text() != text:  # kept as is when resuming
            write_text_atomic(train, text)
        texts = held_docs
    return train, pack_tokens(texts, tokenizer, settings.seq_len, settings.heldout_seqs, seed=0)


def _scores(teacher, tokenizer, model_dir: Path, train_text: Path, plan: SearchPlan,
            settings: SearchSettings, work: Path) -> Path:
    """One importance artifact for every candidate: the given one (checked against these
    settings and weights), the one an interrupted run computed with the same settings, or one
    calibration pass now."""
    blocks = sorted({plan.source.shape.num_layers - c.shape.num_layers
                     for c in plan.candidates} - {0})
    if settings.scores is not None:
        loaded = ImportanceScores.load(settings.scores)
        for block in blocks or [0]:
            loaded.check_reuse(settings, plan.source.shape, block)
        loaded.check_weights(teacher)
        return loaded.save(work / SCORES)
    path, stamp = work / SCORES, work / "scores-settings.json"
    wanted = settings_hash({"scoring": settings.scoring().record(), "blocks": blocks,
                            "calib": str(train_text), "model": str(model_dir)})
    if path.is_file() and stamp.is_file() and stamp.read_text().strip() == wanted:
        return path
    batches = calibration_batches(train_text, tokenizer, settings.calib_samples,
                                  settings.seq_len, settings.batch_size, settings.seed,
                                  settings.text_column, settings.split)
    computed = score_model(teacher, batches, settings, block_sizes=sorted({1, *blocks}),
                           tokenizer=tokenizer, depth_block_sizes=blocks)
    computed.meta.update(source=str(model_dir.resolve()), calib=str(train_text))
    computed.save(path)
    write_text_atomic(stamp, wanted + "\n")
    return path


def _best(order: list[Candidate], results: dict[str, dict], settings: SearchSettings
          ) -> Candidate:
    """The best shape: lowest loss (after KD unless ranked by loss), or best task accuracy."""
    if settings.rank_by == "loss":
        return order[0]
    ranked = order[:settings.candidates]
    if settings.rank_task:
        return max(ranked, key=lambda c: (results[c.shape_key]["task"],
                                          -results[c.shape_key]["loss_kd"]))
    return min(ranked, key=lambda c: results[c.shape_key]["loss_kd"])


def _rows(plan: SearchPlan, results: dict[str, dict] | None,
          chosen: Candidate | None) -> list[dict]:
    """One row per shape-precision pair; the chosen shape's other precisions get no gap (they
    share its losses)."""
    results = results or {}
    reference = results.get(chosen.shape_key, {}) if chosen else {}
    rows = []
    for c in plan.candidates:
        got = results.get(c.shape_key, {})
        same = chosen is not None and c.student == chosen.student and c.key != chosen.key
        rows.append({"key": c.key, "shape_key": c.shape_key, "axes": c.axes,
                     "shape": c.student.as_dict(), **asdict(c.prediction),
                     "loss_pruned": got.get("loss_pruned"), "loss_kd": got.get("loss_kd"),
                     "task": got.get("task"),
                     **_gap(got, {} if same else reference, "pruned"),
                     **_gap(got, {} if same else reference, "kd"),
                     "chosen": chosen is not None and c.key == chosen.key})
    return rows


def _gap(got: dict, reference: dict, stage: str) -> dict:
    """``loss_<stage>`` above the chosen candidate's, paired over the held-out sequences, with
    its standard error (None where either was not measured)."""
    mine, theirs = got.get(f"loss_{stage}_seqs"), reference.get(f"loss_{stage}_seqs")
    gap, stderr = paired_gap(mine, theirs) if mine and theirs else (None, None)
    return {f"gap_{stage}": gap, f"gap_{stage}_stderr": stderr}


def _tied(rows: list[dict], settings: SearchSettings) -> list[str]:
    """Candidates whose loss, by the measure that chose, is within two standard errors of the
    chosen one's: the ranking did not separate them (none when a task accuracy chose)."""
    if settings.rank_task:
        return []
    stage = ranked_stage(settings.rank_by)
    return [r["key"] for r in rows if not r["chosen"] and r[f"gap_{stage}"] is not None
            and r[f"gap_{stage}"] <= 2 * r[f"gap_{stage}_stderr"]]


def _report(plan: SearchPlan, settings: SearchSettings, model_dir: Path,
            results: dict[str, dict] | None, chosen: Candidate | None) -> dict:
    from ..bench.hardware import GPU_LIMITS_SOURCE

    rows = _rows(plan, results, chosen)
    return {"model": str(model_dir), "source_shape": plan.source.as_dict(),
            "source_params": plan.source_params,
            "source_active_params": plan.source_active_params,
            "goal": {**asdict(plan.goal), "window": list(plan.goal.window())},
            "deployment": asdict(settings.deployment()),
            "gpu_numbers": GPU_LIMITS_SOURCE[settings.gpu], "settings": settings.record(),
            "bounds": asdict(settings.bounds()), "align": settings.align.as_dict(),
            "rank_by": settings.rank_by, "top_k": settings.candidates,
            "rank_tokens": settings.rank_tokens, "rule": plan.rule,
            "schemes": list(settings.scheme_list),
            "chosen": chosen and chosen.key, "chosen_scheme": chosen and chosen.scheme,
            "candidates": rows, "tied_with_chosen": _tied(rows, settings)}


def _dry_run(config, plan: SearchPlan, settings: SearchSettings, model_dir: Path,
             out: Path) -> SearchResult:
    """search.json / search.md / search.png and ``configs/<key>/config.json`` per candidate."""
    report = _report(plan, settings, model_dir, None, None)
    with atomic_dir(out) as tmp:
        write_report(report, tmp)
        for c in shape_representatives(plan.candidates):
            c.student.config(config).save_pretrained(str(tmp / "configs" / c.shape_key))
    return SearchResult(out, report, None)


def _finish(model_dir: Path, out: Path, work: Path, plan: SearchPlan, settings: SearchSettings,
            results: dict[str, dict], chosen: Candidate, scores_path: Path, device: str,
            dtype: str) -> SearchResult:
    """Prune the chosen shape from the scores into the work dir, add the report and the
    per-candidate results, then move it to ``out`` and drop the work dir."""
    report = _report(plan, settings, model_dir, results, chosen)
    final = work / "chosen"
    shutil.rmtree(final, ignore_errors=True)
    prune(model_dir, final, PruneSettings.make(shape_spec(chosen, settings.align),
                                               settings.scoring(), scores=str(scores_path)),
          device=device, dtype=dtype)
    write_report(report, final / ARTIFACTS_DIR)
    shutil.copytree(work / CACHE_DIR, final / ARTIFACTS_DIR / CACHE_DIR)
    check_output_dir(out, model_dir)
    if out.exists():
        out.rmdir()
    os.replace(final, out)
    shutil.rmtree(work, ignore_errors=True)
    return SearchResult(out, report, chosen.key)
