"""Every subcommand's help teaches: each option says what it does and the default it really
has (as rendered by ``--help``), and the command ends with a worked example."""

import argparse
import re

import pytest

from minitron_deploy.cli import build_parser


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _option_blocks(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The rendered ``--help`` text of each option, keyed by its first option string, with
    line wrapping undone."""
    text = parser.format_help()
    blocks: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        match = re.match(r"^  (-[-\w]+)", line)
        if match:
            current = match.group(1)
            blocks[current] = line
        elif current and line.startswith("    "):
            blocks[current] += " " + line.strip()
        else:
            current = None
    return {k: " ".join(v.split()) for k, v in blocks.items()}


def _written(value) -> set[str]:
    """Ways a help text may write ``value``."""
    if isinstance(value, bool):
        return {"off", "false"} if not value else {"on", "true"}
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return set()  # the help says what leaving the option out does
    if isinstance(value, float):
        return {str(value), f"{value:g}"}
    if hasattr(value, "__dataclass_fields__"):
        return {",".join(str(getattr(value, f)) for f in value.__dataclass_fields__)}
    return {str(value)}


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_option_says_what_it_does_and_its_real_default(name):
    parser = _subcommands()[name]
    blocks = _option_blocks(parser)
    one_required = {a for g in parser._mutually_exclusive_groups if g.required
                    for a in g._group_actions}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        block = blocks[action.option_strings[0]]
        assert action.help and action.help.strip(), (name, action.option_strings)
        if action.required or action in one_required:
            continue
        said = re.findall(r"default[:]? ([^;)]+)|(\S+) \(default\)", block, flags=re.I)
        assert said, (name, block)
        shown = " ".join(a or b for a, b in said).lower()
        written = _written(action.default)
        assert not written or any(w.lower() in shown for w in written), \
            (name, action.option_strings, action.default, block)


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_command_ends_with_an_example(name):
    parser = _subcommands()[name]
    assert parser.epilog and parser.epilog.startswith("example"), name
    assert f"minitron {name} " in parser.epilog or f"minitron_deploy.cli {name} " in parser.epilog
    assert parser.format_help().rstrip().endswith(parser.epilog.rstrip().splitlines()[-1])
