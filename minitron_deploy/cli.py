"""``minitron`` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import importlib
import sys

from .commands import COMMAND_MODULES
from .errors import MinitronError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minitron", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MinitronError as exc:
        print(f"minitron: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minitron: interrupted; no output was written (distill continues with --resume)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
