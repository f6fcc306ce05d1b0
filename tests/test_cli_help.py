"""Every subcommand's help teaches: each option says what it does and its default, and the
command ends with a worked example."""

import argparse

import pytest

from minitron_deploy.cli import HelpFormatter, build_parser


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_option_has_help_with_its_default(name):
    parser = _subcommands()[name]
    formatter = HelpFormatter(prog=parser.prog)
    one_required = {a for g in parser._mutually_exclusive_groups if g.required
                    for a in g._group_actions}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help.strip(), (name, action.option_strings)
        if not action.required and action not in one_required:
            assert "default" in formatter._get_help_string(action), (name, action.option_strings)


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_command_ends_with_an_example(name):
    parser = _subcommands()[name]
    assert parser.epilog and parser.epilog.startswith("example"), name
    assert f"minitron {name} " in parser.epilog or f"minitron_deploy.cli {name} " in parser.epilog
    assert parser.format_help().rstrip().endswith(parser.epilog.rstrip().splitlines()[-1])
