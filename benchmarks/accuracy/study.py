"""Accuracy study: Minitron pruning + KD against other criteria, LM-loss retraining,
depth pruning at equal size and training from scratch, on the demo teacher (SmolLM2-135M).

Every model is made and scored through the public API (``prune``, ``distill``, ``evaluate``);
each step writes its output atomically under ``--work`` and is skipped when re-run, so a killed
study continues where it stopped. Results (JSON, Markdown, plots) go to ``--results``.

    python benchmarks/accuracy/study.py run --profile cpu --results benchmarks/accuracy/results/cpu
    python benchmarks/accuracy/study.py prepare-text --rst-root /tmp/pydoc/usr/share/doc/python3.11/html/_sources --out /tmp/pydoc-text
    python benchmarks/accuracy/study.py run --profile gpu --data /tmp/pydoc-text/train.jsonl \\
        --heldout /tmp/pydoc-text/heldout.jsonl --results benchmarks/accuracy/results/h100

Rows (``NAME = shape/how-chosen/retraining``): the teacher; ``width/<criterion>/none|kd`` for
every criterion; ``depth/<loss|bi|accuracy>/none|kd`` at the depth of equal parameter count;
``width/activation/lm`` (LM loss instead of KD, same start and tokens); ``scratch/random-init/kd``
(the width shape from random initialization, same objective and tokens).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_report import TASKS, mmlu_above_chance, write_report

from minitron_deploy.arch.modeling import (
    load_config,
    load_model,
    save_checkpoint_atomic,
)
from minitron_deploy.bench.hardware import machine_info, resolve_device
from minitron_deploy.core.artifacts import (
    DISTILL_SUMMARY,
    PRUNING_RECORD,
    TRAIN_LOG,
    artifact_path,
)
from minitron_deploy.core.files import write_text_atomic
from minitron_deploy.core.shape import ModelShape, count_params
from minitron_deploy.data.assets import resolve
from minitron_deploy.data.text import load_texts, pack_tokens
from minitron_deploy.distill.api import DistillConfig, distill, work_dir_for
from minitron_deploy.eval.api import evaluate
from minitron_deploy.eval.multiple_choice import evaluate_items
from minitron_deploy.eval.perplexity import perplexity
from minitron_deploy.eval.tasks import load_named_task
from minitron_deploy.importance.criteria import CRITERIA
from minitron_deploy.importance.depth import DEPTH_METRICS
from minitron_deploy.importance.scores import ImportanceScores
from minitron_deploy.pruning.api import prune
from minitron_deploy.pruning.scoring import ScoringSettings
from minitron_deploy.pruning.settings import PruneSettings
from minitron_deploy.pruning.target import TargetSpec, resolve_target


@dataclass
class Profile:
    """Every knob of the study; ``cpu`` is the reduced version, ``gpu`` the full one."""

    target_params: float
    seq_len: int
    batch_size: int
    tokens: int
    lr: float
    warmup_steps: int
    precision: str
    calib_samples: int
    calib_seq_len: int
    depth_samples: int
    depth_task_limit: int
    zo_steps: int
    group_size: int
    eval_limit: int | None
    mmlu_limit: int  # items per MMLU subject (57 subjects)
    eval_batch: int
    ppl_seqs: int
    curve_points: int
    curve_limit: int


PROFILES = {
    "cpu": Profile(target_params=0.5, seq_len=256, batch_size=8, tokens=32_768, lr=1e-3,
                   warmup_steps=2, precision="bf16", calib_samples=128, calib_seq_len=128,
                   depth_samples=4, depth_task_limit=100, zo_steps=32, group_size=512,
                   eval_limit=100, mmlu_limit=5, eval_batch=16, ppl_seqs=32, curve_points=4,
                   curve_limit=20),
    "gpu": Profile(target_params=0.5, seq_len=1024, batch_size=32, tokens=2_097_152, lr=1e-3,
                   warmup_steps=5, precision="bf16", calib_samples=1024, calib_seq_len=512,
                   depth_samples=128, depth_task_limit=500, zo_steps=512, group_size=32,
                   eval_limit=1000, mmlu_limit=20, eval_batch=64, ppl_seqs=128, curve_points=6, curve_limit=300),
}


@dataclass(frozen=True)
class Row:
    """One model of the study: its shape family, how units were chosen, how it was retrained."""

    shape: str      # teacher | width | depth | scratch
    chosen_by: str  # criterion or depth metric ("-" for the teacher)
    retrain: str    # none | kd | lm

    @property
    def name(self) -> str:
        return "teacher" if self.shape == "teacher" else f"{self.shape}/{self.chosen_by}/{self.retrain}"

    @property
    def slug(self) -> str:
        return self.name.replace("/", "-")


def study_rows(criteria: list[str]) -> list[Row]:
    """Every row in the order the table shows them."""
    rows = [Row("teacher", "-", "none")]
    for c in criteria:
        rows += [Row("width", c, "none"), Row("width", c, "kd")]
    for m in DEPTH_METRICS:
        rows += [Row("depth", m, "none"), Row("depth", m, "kd")]
    rows += [Row("width", "activation", "lm"), Row("scratch", "random-init", "kd")]
    return rows


def equal_size_depth(config, width_params: int) -> int:
    """The layer count whose depth-pruned model is closest in parameters to the width shape."""
    source = ModelShape.from_config(config)
    return min(range(1, source.num_layers),
               key=lambda n: abs(count_params(config, replace(source, num_layers=n)) - width_params))


def select_rows(rows: list[Row], names: str) -> list[Row]:
    """The rows named in ``names`` (comma-separated), in that order; unknown names refused."""
    by_name = {r.name: r for r in rows}
    unknown = [n for n in names.split(",") if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {sorted(by_name)}")
    return [by_name[n] for n in names.split(",")]


class Study:
    """Makes, retrains and evaluates every row; each artifact is skipped when already there."""

    def __init__(self, args: argparse.Namespace, profile: Profile) -> None:
        self.args, self.p = args, profile
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.device = str(resolve_device(args.device))
        self.teacher = resolve(args.teacher, self.work)
        self.data = resolve(args.data, self.work)
        self.heldout = resolve(args.heldout, self.work)
        self.results = Path(args.results)
        self.results.mkdir(parents=True, exist_ok=True)
        config = load_config(self.teacher)
        width = resolve_target(config, TargetSpec(target_params=profile.target_params))
        self.width_spec = TargetSpec(hidden_size=width.shape.hidden_size,
                                     ffn_hidden_size=width.shape.ffn_hidden_size,
                                     num_heads=width.shape.num_heads,
                                     num_kv_heads=width.shape.num_kv_heads)
        self.depth_layers = equal_size_depth(config, width.params_after)
        self.params = {"teacher": width.params_before, "width": width.params_after,
                       "depth": count_params(config, replace(ModelShape.from_config(config),
                                                             num_layers=self.depth_layers))}

    # -- paths -------------------------------------------------------------------------------
    def model_dir(self, row: Row) -> Path:
        if row.shape == "teacher":
            return self.teacher
        if row.retrain == "none":
            return self.work / "pruned" / row.slug
        return self.work / "trained" / row.slug

    def make_start(self, row: Row) -> Path:
        """The checkpoint a retraining row starts from (made first if missing)."""
        if row.shape == "scratch":
            return self.make_scratch_init()
        start = Row(row.shape, row.chosen_by, "none")
        self.make_pruned(start)
        return self.model_dir(start)

    def scores(self, criterion: str) -> ImportanceScores:
        """The importance scores the width row of ``criterion`` was pruned with."""
        row = Row("width", criterion, "none")
        self.make_pruned(row)
        return ImportanceScores.load(self.model_dir(row))

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.teacher))

    @cached_property
    def heldout_sequences(self) -> torch.Tensor:
        """The held-out perplexity sequences (``ppl_seqs`` x ``seq_len``)."""
        return pack_tokens(load_texts(self.heldout), self.tokenizer, self.p.seq_len,
                           self.p.ppl_seqs, seed=0)

    # -- steps -------------------------------------------------------------------------------
    def make_pruned(self, row: Row) -> None:
        out = self.model_dir(row)
        if artifact_path(out, PRUNING_RECORD).is_file():
            return
        p = self.p
        if row.shape == "width":
            spec, settings = self.width_spec, ScoringSettings(
                criterion=row.chosen_by, depth_samples=p.depth_samples, zo_steps=p.zo_steps,
                group_size=p.group_size, seed=self.args.seed)
        else:
            spec = TargetSpec(num_layers=self.depth_layers)
            settings = ScoringSettings(depth_metric=row.chosen_by, depth_samples=p.depth_samples,
                                       seed=self.args.seed)
        prune(self.teacher, out, PruneSettings.make(spec, settings), calib=self.data,
              calib_samples=p.calib_samples, seq_len=p.calib_seq_len,
              batch_size=max(1, min(16, p.calib_samples)), task="winogrande",
              task_limit=p.depth_task_limit, device=self.device)

    def make_scratch_init(self) -> Path:
        """The width shape (as pruned by activation) with fresh random weights."""
        out = self.work / "init" / "scratch-random-init"
        if (out / "config.json").is_file():
            return out
        from transformers import AutoModelForCausalLM

        source = Row("width", "activation", "none")
        self.make_pruned(source)
        source = self.model_dir(source)
        torch.manual_seed(self.args.seed)
        model = AutoModelForCausalLM.from_config(load_config(source))
        save_checkpoint_atomic(model, out, source_dir=source)
        return out

    def distill_config(self, row: Row) -> DistillConfig:
        p = self.p
        steps = -(-p.tokens // (p.batch_size * p.seq_len))
        return DistillConfig(tokens=p.tokens, seq_len=p.seq_len, batch_size=p.batch_size,
                             lr=p.lr, warmup_steps=p.warmup_steps, precision=p.precision,
                             checkpoint_every=max(1, steps // p.curve_points),
                             lm_loss_weight=1.0 if row.retrain == "lm" else 0.0,
                             device=self.device, seed=self.args.seed)

    def retrain(self, row: Row) -> None:
        out = self.model_dir(row)
        if artifact_path(out, DISTILL_SUMMARY).is_file():
            return
        start = self.make_start(row)
        curve_file = self.results / "curves" / f"{row.slug}.json"
        curve = json.loads(curve_file.read_text()) if curve_file.is_file() else {}
        cfg = self.distill_config(row)
        tokens_per_step = cfg.batch_size * cfg.seq_len

        def record(step: int, model) -> None:
            curve[str(step * tokens_per_step)] = self.quick_eval(model)
            write_text_atomic(curve_file, json.dumps(curve, indent=1) + "\n")

        if "0" not in curve:
            model, _ = load_model(start, device=self.device)
            record(0, model)
            del model
        distill(self.teacher, start, self.data, out, cfg,
                resume=work_dir_for(out.resolve()).exists(), on_checkpoint=record)

    def evaluate_row(self, row: Row) -> dict:
        out = self.results / "evals" / f"{row.slug}.json"
        if out.is_file():
            return json.loads(out.read_text())
        p = self.p
        t0 = time.perf_counter()
        metrics = evaluate(self.model_dir(row), ["ppl", *TASKS], p.eval_limit, self.heldout,
                           p.seq_len, p.ppl_seqs, self.device, batch_size=p.eval_batch)
        if self.wants_mmlu(row):
            metrics.update(evaluate(self.model_dir(row), ["mmlu"], p.mmlu_limit,
                                    device=self.device, batch_size=p.eval_batch))
        metrics["eval_seconds"] = time.perf_counter() - t0
        write_text_atomic(out, json.dumps(metrics, indent=1) + "\n")
        return metrics

    def wants_mmlu(self, row: Row) -> bool:
        """MMLU for the teacher, and for the other rows only if the teacher beats chance."""
        if row.shape == "teacher":
            return True
        teacher = self.results / "evals" / "teacher.json"
        return teacher.is_file() and mmlu_above_chance(json.loads(teacher.read_text())["mmlu"])

    # -- quick evaluation at checkpoints -----------------------------------------------------
    @cached_property
    def curve_items(self) -> dict:
        return {t: load_named_task(t, self.p.curve_limit) for t in TASKS}

    def quick_eval(self, model) -> dict:
        """Held-out perplexity and accuracy on the first ``curve_limit`` items of each task."""
        was_training = model.training
        model.eval()
        out: dict = {"ppl": perplexity(model, self.heldout_sequences)}
        for task, task_items in self.curve_items.items():
            out[task] = asdict(evaluate_items(model, self.tokenizer, task_items,
                                              self.p.eval_batch))
        model.train(was_training)
        return out

    # -- the whole study ---------------------------------------------------------------------
    def run(self, rows: list[Row]) -> None:
        pruned = [r for r in rows if r.retrain == "none" and r.shape != "teacher"]
        trained = [r for r in rows if r.retrain != "none"]
        steps = ([(f"prune {r.name}", lambda r=r: self.make_pruned(r)) for r in pruned]
                 + [(f"retrain {r.name}", lambda r=r: self.retrain(r)) for r in trained]
                 + [(f"evaluate {r.name}", lambda r=r: self.evaluate_row(r)) for r in rows])
        for i, (label, step) in enumerate(steps, 1):
            t0 = time.perf_counter()
            print(f"[{i}/{len(steps)}] {label}", flush=True)
            step()
            print(f"[{i}/{len(steps)}] {label}: {time.perf_counter() - t0:.1f} s", flush=True)
        self.write_meta(rows)
        write_report(self.results)

    def write_meta(self, rows: list[Row]) -> None:
        meta = {
            "command": " ".join(sys.argv),
            "date": datetime.date.today().isoformat(),
            "commit": self.args.commit or _git_commit(),
            "machine": machine_info(torch.device(self.device)),
            "profile": self.args.profile, "settings": asdict(self.p),
            "device": self.device, "seed": self.args.seed,
            "teacher": self.args.teacher, "data": self.args.data, "heldout": self.args.heldout,
            "data_tokens": sum(len(self.tokenizer(t, add_special_tokens=False)["input_ids"])
                               for t in load_texts(self.data)),
            "params": self.params, "depth_layers": self.depth_layers,
            "width_shape": {k: v for k, v in asdict(self.width_spec).items() if v is not None},
            "rows": [{"name": r.name, **asdict(r),
                      "model": str(self.model_dir(r).relative_to(self.work))
                      if r.shape != "teacher" else self.args.teacher,
                      **self._provenance(r)} for r in rows],
        }
        write_text_atomic(self.results / "meta.json", json.dumps(meta, indent=1) + "\n")

    def _provenance(self, row: Row) -> dict:
        folder = self.model_dir(row)
        out: dict = {}
        if artifact_path(folder, PRUNING_RECORD).is_file():
            rec = json.loads(artifact_path(folder, PRUNING_RECORD).read_text())
            out.update(dropped_layers=rec["dropped_layers"], target_shape=rec["target_shape"],
                       params=rec["params_after"])
        if artifact_path(folder, DISTILL_SUMMARY).is_file():
            rec = json.loads(artifact_path(folder, DISTILL_SUMMARY).read_text())
            out.update(train_tokens=rec["tokens"], train_seconds=rec["train_seconds"],
                       first_loss=rec["first_loss"], last_loss=rec["last_loss"])
            log = artifact_path(folder, TRAIN_LOG)
            out["train_log"] = [json.loads(line) for line in log.read_text().splitlines()]
        return out


def probe(study: Study, rows: list[Row], texts: dict[str, str], seqs: int) -> dict:
    """Per row: perplexity on each named text, and forward KL(teacher || row) per token on the
    first one; to see what a retraining objective bought (in-domain fit vs teacher match)."""
    from minitron_deploy.core.likelihood import shifted_labels
    from minitron_deploy.distill.losses import logit_kd_loss

    packed = {name: pack_tokens(load_texts(resolve(src, study.work)), study.tokenizer,
                                study.p.seq_len, seqs, seed=0) for name, src in texts.items()}
    first = next(iter(packed.values()))
    teacher, _ = load_model(study.teacher, device=study.device)
    with torch.no_grad():
        teacher_logits = [teacher(input_ids=b.to(study.device), use_cache=False).logits
                          for b in first.split(4)]
    del teacher
    out: dict = {}
    for row in rows:
        model, _ = load_model(study.model_dir(row), device=study.device)
        rec = {f"ppl[{name}]": perplexity(model, seq) for name, seq in packed.items()}
        total = 0.0
        with torch.no_grad():
            for batch, t_logits in zip(first.split(4), teacher_logits):
                batch = batch.to(study.device)
                logits = model(input_ids=batch, use_cache=False).logits
                total += float(logit_kd_loss(logits, t_logits, shifted_labels(batch)).kd) * len(batch)
        rec["kl_to_teacher"] = total / len(first)
        out[row.name] = rec
        print(row.name, json.dumps(rec), flush=True)
        del model
    return out


def _ranks(x: torch.Tensor) -> torch.Tensor:
    return x.argsort().argsort().double()


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = _ranks(a), _ranks(b)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def _kept_overlap(a: torch.Tensor, b: torch.Tensor, keep: int) -> float:
    return len(set(a.topk(keep).indices.tolist()) & set(b.topk(keep).indices.tolist())) / keep


def score_agreement(study: Study, criteria: list[str]) -> dict:
    """Per criterion, against the activation scores: Spearman correlation and the overlap of the
    kept sets at the width shape, for embedding channels and MLP neurons (mean over layers).
    Chance overlap is keep / total."""
    base, spec = study.scores("activation").tensors, study.width_spec
    layers = sum(1 for k in base if k.startswith("mlp."))
    out: dict = {"chance_overlap": {"hidden": spec.hidden_size / len(base["hidden"]),
                                    "mlp": spec.ffn_hidden_size / len(base["mlp.0"])}}
    for criterion in criteria:
        other = study.scores(criterion).tensors
        mlp = [(base[f"mlp.{i}"], other[f"mlp.{i}"]) for i in range(layers)]
        out[criterion] = {
            "spearman_hidden": _spearman(base["hidden"], other["hidden"]),
            "spearman_mlp": sum(_spearman(a, b) for a, b in mlp) / layers,
            "overlap_hidden": _kept_overlap(base["hidden"], other["hidden"], spec.hidden_size),
            "overlap_mlp": sum(_kept_overlap(a, b, spec.ffn_hidden_size)
                               for a, b in mlp) / layers}
    return out


SWAP_AXES = {"heads": ("heads.", "kv_heads."), "mlp": ("mlp.",), "hidden": ("hidden",)}


def axis_swap(study: Study, criteria: list[str]) -> dict:
    """Held-out perplexity (no retraining) of the width shape pruned with the activation scores
    except one axis taken from another criterion: which axis makes that criterion worse."""
    base = study.scores("activation")
    variants = {"activation": base.tensors}
    for criterion in criteria:
        donor = study.scores(criterion)
        for axis, prefixes in SWAP_AXES.items():
            variants[f"{criterion}:{axis}"] = {
                k: donor.tensors[k] if k.startswith(prefixes) else v
                for k, v in base.tensors.items()}
    out: dict = {}
    for name, tensors in variants.items():
        dest = study.work / "swap" / name.replace(":", "-")
        if not artifact_path(dest, PRUNING_RECORD).is_file():
            scores_file = study.work / "swap" / f"{dest.name}.safetensors"
            ImportanceScores(tensors, base.meta).save(scores_file)
            prune(study.teacher, dest, study.width_spec, scores=scores_file,
                  device=study.device)
        model, _ = load_model(dest, device=study.device)
        out[name] = perplexity(model, study.heldout_sequences)
        print(f"{name}: held-out ppl {out[name]:.1f}", flush=True)
        del model
    return out


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def prepare_text(rst_root: Path, out: Path, heldout_every: int = 20) -> None:
    """One JSONL document per reST source file of the Python docs (Debian ``python3.11-doc``);
    every ``heldout_every``-th file (sorted by path) goes to ``heldout.jsonl``."""
    files = sorted(rst_root.rglob("*.rst.txt"))
    if not files:
        raise SystemExit(f"no *.rst.txt files under {rst_root}")
    splits: dict[str, list[str]] = {"train": [], "heldout": []}
    for i, f in enumerate(files):
        text = f.read_text(errors="replace").strip()
        if text:
            splits["heldout" if i % heldout_every == heldout_every - 1 else "train"].append(
                json.dumps({"text": text}))
    for name, lines in splits.items():
        write_text_atomic(out / f"{name}.jsonl", "\n".join(lines) + "\n")
        print(f"{out / (name + '.jsonl')}: {len(lines)} documents")


def _study_arguments(parser: argparse.ArgumentParser) -> None:
    """What every subcommand working on a study needs to find its models and results."""
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--teacher", default="builtin:smollm2-135m")
    parser.add_argument("--data", default="builtin:stdlib-docs")
    parser.add_argument("--heldout", default="builtin:stdlib-docs-heldout")
    parser.add_argument("--work", default="out/accuracy-study")
    parser.add_argument("--results", default="benchmarks/accuracy/results/cpu")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="make, retrain and evaluate every row; write the report")
    _study_arguments(run)
    run.add_argument("--criteria", default=",".join(CRITERIA))
    run.add_argument("--only", default=None, help="comma-separated row names to run, in this order")
    run.add_argument("--commit", default=None, help="commit to record (default: git HEAD)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a profile setting, e.g. --set tokens=1000000")
    report = sub.add_parser("report", help="rewrite tables, claims and plots from results")
    report.add_argument("--results", required=True)
    prb = sub.add_parser("probe", help="perplexity on extra texts and KL to the teacher")
    _study_arguments(prb)
    prb.add_argument("--rows", required=True, help="comma-separated row names")
    prb.add_argument("--text", action="append", default=[], metavar="NAME=PATH",
                     help="extra held-out text (the study's held-out text comes first)")
    prb.add_argument("--seqs", type=int, default=32)
    swap = sub.add_parser("axis-swap", help="activation scores with one axis from another "
                          "criterion: perplexity before retraining")
    _study_arguments(swap)
    swap.add_argument("--criteria", default="magnitude,random,mini-llm,loss-delta")
    swap.add_argument("--agreement-only", action="store_true",
                      help="only compare the score files (no pruning or evaluation)")
    prep = sub.add_parser("prepare-text", help="Python docs reST sources -> train/heldout JSONL")
    prep.add_argument("--rst-root", required=True, type=Path)
    prep.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)

    if args.command == "report":
        write_report(Path(args.results))
    elif args.command == "probe":
        study = Study(args, PROFILES[args.profile])
        texts = {"heldout": args.heldout, **dict(t.split("=", 1) for t in args.text)}
        result = probe(study, select_rows(study_rows(list(CRITERIA)), args.rows), texts, args.seqs)
        write_text_atomic(study.results / "probe.json", json.dumps(
            {"command": " ".join(sys.argv), "texts": texts, "rows": result}, indent=1) + "\n")
    elif args.command == "axis-swap":
        study = Study(args, PROFILES[args.profile])
        criteria, command = args.criteria.split(","), " ".join(sys.argv)
        write_text_atomic(study.results / "agreement.json", json.dumps(
            {"command": command, "vs_activation": score_agreement(study, criteria)},
            indent=1) + "\n")
        if not args.agreement_only:
            write_text_atomic(study.results / "axis_swap.json", json.dumps(
                {"command": command, "heldout_ppl": axis_swap(study, criteria)}, indent=1) + "\n")
    elif args.command == "prepare-text":
        prepare_text(args.rst_root, args.out)
    else:
        profile = PROFILES[args.profile]
        for item in args.set:
            key, _, value = item.partition("=")
            kind = type(getattr(profile, key))
            profile = replace(profile, **{key: None if value == "none" else
                                          (int(float(value)) if kind is int else kind(value))})
        rows = study_rows([c.strip() for c in args.criteria.split(",")])
        if args.only:  # in the order given, after the teacher
            rows = [rows[0]] + [r for r in select_rows(rows, args.only) if r.shape != "teacher"]
        Study(args, profile).run(rows)


if __name__ == "__main__":
    main()
