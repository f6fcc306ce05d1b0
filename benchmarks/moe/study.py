"""Mixture-of-experts pruning study: a small MoE that has really been trained, then pruned.

Without ``--model``, the MoE is made from the demo teacher (SmolLM2-135M): MoEfied into a
stock Mixtral checkpoint (``moefy.py``: 8 experts of 192 neurons per layer by co-activation
clustering, top-2, least-squares router) and distilled briefly from the dense model, so its
routing is learned and its experts differ by construction. With ``--model DIR`` (any MoE
checkpoint minitron prunes) that folder is the MoE.

Rows: half the experts removed by REAP, by routed-token frequency and at random; half the
expert width removed by activation and by magnitude. Each is evaluated (held-out perplexity
with its standard error) right after pruning and after the same short KD budget from the
unpruned MoE. Every step writes atomically under ``--work`` and is skipped on a re-run.

    python benchmarks/moe/study.py                      # MoEfied SmolLM2-135M, CPU budget
    python benchmarks/moe/study.py --model path/to/moe  # a real MoE checkpoint
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from moefy import moefy
from provenance import provenance

from minitron_deploy.arch import get_adapter
from minitron_deploy.arch.modeling import load_config, load_model
from minitron_deploy.core.artifacts import DISTILL_SUMMARY, PRUNING_RECORD
from minitron_deploy.core.files import write_text_atomic
from minitron_deploy.data.assets import resolve, resolve_checkpoint
from minitron_deploy.data.text import load_texts, pack_tokens
from minitron_deploy.distill.api import DistillConfig, distill, work_dir_for
from minitron_deploy.eval.perplexity import perplexity_with_stderr
from minitron_deploy.pruning.api import prune


@dataclass(frozen=True)
class Row:
    """One pruned model: which axis is halved and by what criterion."""

    axis: str       # experts | width
    criterion: str  # reap | frequency | random (experts); activation | magnitude (width)

    @property
    def name(self) -> str:
        return f"{self.axis}/{self.criterion}"

    @property
    def slug(self) -> str:
        return self.name.replace("/", "-")


ROWS = [Row("experts", c) for c in ("reap", "frequency", "random")] + \
    [Row("width", c) for c in ("activation", "magnitude")]


class Study:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.work)
        self.results = Path(args.results)
        for d in (self.work, self.results / "evals"):
            d.mkdir(parents=True, exist_ok=True)
        self.data = resolve(args.data, self.work)
        self.heldout = resolve(args.heldout, self.work)
        self.times: dict[str, float] = {}
        self._heldout_ids: torch.Tensor | None = None

    # -- the MoE ------------------------------------------------------------------------
    def moe(self) -> Path:
        """The unpruned MoE: ``--model``, or the MoEfied teacher after its brief KD."""
        if self.args.model:
            return Path(self.args.model)
        out = self.work / "moe"
        if (out / "minitron" / DISTILL_SUMMARY).is_file():
            return out
        init = self.moe_init()
        self.timed("distill moe", lambda: distill(
            self.dense(), init, self.data, out,
            self.kd_config(self.args.moe_tokens, self.args.moe_lr,
                           router_aux_loss_coef=self.args.moe_aux_loss_coef),
            resume=work_dir_for(out.resolve()).exists()))
        return out

    def dense(self) -> Path:
        return resolve_checkpoint(self.args.teacher, self.work)

    def moe_init(self) -> Path:
        out = self.work / "moe-init"
        report = self.results / "moefy.json"
        if not (out / "config.json").is_file():
            calib = self.pack(self.data, self.args.calib_samples, seed=1)
            info = self.timed("moefy", lambda: moefy(
                self.dense(), out, calib, self.args.experts, self.args.top_k, self.args.seed))
            write_text_atomic(report, json.dumps(info, indent=1) + "\n")
        return out

    # -- steps --------------------------------------------------------------------------
    def halves(self) -> dict[str, int]:
        """Half the experts, and half the expert width rounded down to a multiple of 8."""
        config = load_config(self.moe())
        shape = get_adapter(config).expert_shape(config)
        return {"num_experts": shape.num_experts // 2,
                "moe_ffn_hidden_size": shape.ffn // 2 // 8 * 8}

    def pruned(self, row: Row) -> Path:
        out = self.work / "pruned" / row.slug
        if (out / "minitron" / PRUNING_RECORD).is_file():
            return out
        halves = self.halves()
        target = ({"num_experts": halves["num_experts"], "expert_criterion": row.criterion}
                  if row.axis == "experts" else
                  {"moe_ffn_hidden_size": halves["moe_ffn_hidden_size"],
                   "criterion": row.criterion})
        self.timed(f"prune {row.name}", lambda: prune(
            self.moe(), out, calib=self.data, calib_samples=self.args.calib_samples,
            seq_len=self.args.seq_len, batch_size=4, depth_samples=4, seed=self.args.seed,
            device="cpu", dtype="fp32", **target))
        return out

    def kd(self, row: Row) -> Path:
        out = self.work / "kd" / row.slug
        if (out / "minitron" / DISTILL_SUMMARY).is_file():
            return out
        start = self.pruned(row)
        self.timed(f"kd {row.name}", lambda: distill(
            self.moe(), start, self.data, out, self.kd_config(self.args.kd_tokens, self.args.lr),
            resume=work_dir_for(out.resolve()).exists()))
        return out

    def kd_config(self, tokens: int, lr: float, **extra) -> DistillConfig:
        a = self.args
        return DistillConfig(tokens=tokens, seq_len=a.seq_len, batch_size=a.batch_size,
                             lr=lr, warmup_steps=1, **extra, precision="fp32", device="cpu",
                             seed=a.seed, checkpoint_every=10_000)

    def evaluate(self, name: str, model_dir: Path) -> dict:
        out = self.results / "evals" / f"{name.replace('/', '-')}.json"
        if out.is_file():
            return json.loads(out.read_text())
        t0 = time.perf_counter()
        model, _ = load_model(model_dir, dtype="fp32", device="cpu")
        ppl, se = perplexity_with_stderr(model.eval(), self.heldout_ids(), batch_size=4)
        result = {"model": str(model_dir), "ppl": ppl, "se": se,
                  "seconds": time.perf_counter() - t0}
        write_text_atomic(out, json.dumps(result, indent=1) + "\n")
        print(f"  {name}: ppl {ppl:.2f} +- {se:.2f}", flush=True)
        return result

    # -- helpers ------------------------------------------------------------------------
    def pack(self, source: Path, count: int, seed: int) -> torch.Tensor:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(self.moe_source()))
        return pack_tokens(load_texts(source), tokenizer, self.args.seq_len, count, seed=seed)

    def moe_source(self) -> Path:
        """Where the tokenizer comes from (before the MoE exists)."""
        return Path(self.args.model) if self.args.model else self.dense()

    def heldout_ids(self) -> torch.Tensor:
        if self._heldout_ids is None:
            self._heldout_ids = self.pack(self.heldout, self.args.ppl_seqs, seed=0)
        return self._heldout_ids

    def timed(self, label: str, step):
        t0 = time.perf_counter()
        print(f"{label} ...", flush=True)
        result = step()
        self.times[label] = round(time.perf_counter() - t0, 1)
        print(f"{label}: {self.times[label]} s", flush=True)
        return result

    # -- the whole study ----------------------------------------------------------------
    def run(self) -> dict:
        started = time.perf_counter()
        evals = {}
        if not self.args.model:
            evals["dense teacher"] = self.evaluate("dense-teacher", self.dense())
            evals["moe, MoEfied (no training)"] = self.evaluate("moe-init", self.moe_init())
        evals["moe (unpruned)"] = self.evaluate("moe", self.moe())
        rows = {}
        for row in ROWS:
            pruned = self.pruned(row)
            record = json.loads((pruned / "minitron" / PRUNING_RECORD).read_text())
            rows[row.name] = {"pruned": self.evaluate(f"{row.slug}-pruned", pruned),
                              "kd": self.evaluate(f"{row.slug}-kd", self.kd(row)),
                              "utilisation_after": record["experts"]["utilisation"].get("after"),
                              "shape": record["experts"]["target"]}
        summary = {"command": " ".join(sys.argv), **provenance("cpu"), "settings": vars(self.args),
                   "halves": self.halves(), "reference": evals, "rows": rows,
                   "step_seconds": self.times, "wall_seconds": round(time.perf_counter() - started, 1)}
        if (self.results / "moefy.json").is_file():
            summary["moefy"] = json.loads((self.results / "moefy.json").read_text())
        write_text_atomic(self.results / "results.json", json.dumps(summary, indent=1) + "\n")
        write_text_atomic(self.results / "results.md", table(summary))
        plot(summary, self.results / "results.png")
        return summary


def _ppl(e: dict) -> str:
    return f"{e['ppl']:,.2f} ± {e['se']:,.2f}"


def table(summary: dict) -> str:
    """The study's markdown table."""
    lines = ["| model | held-out ppl after pruning | after KD |", "|---|---:|---:|"]
    lines += [f"| {name} | {_ppl(e)} | |" for name, e in summary["reference"].items()]
    lines += [f"| {name} | {_ppl(r['pruned'])} | {_ppl(r['kd'])} |"
              for name, r in summary["rows"].items()]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> Path:
    """Held-out perplexity (log scale, ± standard error) of every row right after pruning and
    after KD, with the unpruned MoE as a line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = summary["rows"]
    names = list(rows)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (stage, label) in enumerate((("pruned", "right after pruning"),
                                        ("kd", f"after KD ({summary['settings']['kd_tokens']:,} "
                                               f"tokens, lr {summary['settings']['lr']:g})"))):
        ax.bar([x + 0.4 * i - 0.2 for x in range(len(names))],
               [rows[n][stage]["ppl"] for n in names], width=0.4,
               yerr=[rows[n][stage]["se"] for n in names], label=label, capsize=3)
    moe = summary["reference"]["moe (unpruned)"]
    ax.axhline(moe["ppl"], color="k", ls="--", lw=1, label=f"unpruned MoE ({moe['ppl']:,.0f})")
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("held-out perplexity (log)")
    ax.set_title("half the experts, or half the expert width, removed")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="an MoE checkpoint folder (default: MoEfy --teacher)")
    p.add_argument("--teacher", default="builtin:smollm2-135m")
    p.add_argument("--data", default="builtin:stdlib-docs")
    p.add_argument("--heldout", default="builtin:stdlib-docs-heldout")
    p.add_argument("--work", default="/tmp/minitron-moe-study")
    p.add_argument("--results", default=str(Path(__file__).parent / "results"))
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--moe-tokens", type=int, default=16_384, help="KD tokens making the MoE")
    p.add_argument("--kd-tokens", type=int, default=8_192, help="KD tokens per pruned row")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate of each row's KD")
    p.add_argument("--moe-lr", type=float, default=1e-3, help="learning rate making the MoE")
    p.add_argument("--moe-aux-loss-coef", type=float, default=0.0,
                   help="router load-balancing loss while making the MoE (0: none)")
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--ppl-seqs", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    summary = Study(p.parse_args(argv)).run()
    print(table(summary))


if __name__ == "__main__":
    main()
