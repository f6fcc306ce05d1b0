"""What the tiny pipeline tests share: a saved tiny teacher with training and held-out text,
named in a recipe's header, and the held-out perplexity the recipes' eval settings give."""

from pathlib import Path

from tiny_models import CALIB_TEXT, save_tiny_checkpoint

from minitron_deploy.eval.api import evaluate


def tiny_recipe_header(folder: Path, name: str) -> str:
    """Save a tiny Llama teacher, training text and held-out text under ``folder``; the
    recipe lines that name them."""
    save_tiny_checkpoint("llama", folder / "teacher")
    (folder / "train.txt").write_text(CALIB_TEXT)
    (folder / "held.txt").write_text(CALIB_TEXT[::-1])
    return (f"name: {name}\nteacher: {folder / 'teacher'}\ndata: {folder / 'train.txt'}\n"
            f"heldout: {folder / 'held.txt'}\n")


def fresh_ppl(model_dir: Path, heldout: Path) -> float:
    """Perplexity of ``model_dir`` computed here, with the tiny recipes' eval settings."""
    return evaluate(model_dir, ["ppl"], ppl_data=heldout, seq_len=32, ppl_seqs=4)["ppl"]
