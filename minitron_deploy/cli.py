"""``minitron`` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import importlib
import sys

from .commands import COMMAND_MODULES
from .core.errors import MinitronError


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples (epilogs) kept as written; every option's help ends with its default unless it
    states it already (options without a default value say what leaving them out does)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.required or action.default in (None, argparse.SUPPRESS):
            return text
        if action.nargs == 0:  # a flag
            return f"{text} (default: off)"
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """Usage errors as one ``minitron: error:`` line (exit 2), like every other refusal; help
    with defaults and examples (``HelpFormatter``)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"minitron: error: {self.prog}: {message} (see {self.prog} --help)\n")


def _close_progress_bars() -> None:
    """End open tqdm bars so the error starts its own line instead of trailing a bar."""
    tqdm_std = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(tqdm_std, "tqdm", None), "_instances", ())):
        bar.close()


def _error(message: str) -> int:
    _close_progress_bars()
    # one write of the whole line: ranks sharing a stderr pipe cannot split each other's line
    sys.stderr.write(f"minitron: error: {message}\n")
    sys.stderr.flush()
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="minitron", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:  # flags read off a settings schema refuse bad values with the schema's error
        args = build_parser().parse_args(argv)
        args.func(args)
    except MinitronError as exc:
        return _error(str(exc))
    except OSError as exc:  # a full disk, a vanished directory: one line, not a traceback
        if exc.strerror is None:
            raise
        return _error(exc.strerror + (f": {exc.filename}" if exc.filename else ""))
    except KeyboardInterrupt:
        print("minitron: interrupted; no output was written (distill continues with --resume)",
              file=sys.stderr)
        return 130
    if "torch.distributed" in sys.modules:  # only a command that ran torch holds groups
        from .core.dist import release

        release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
