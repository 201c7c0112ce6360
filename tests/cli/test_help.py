"""Every subcommand's --help: the defaults it shows are the ones argparse uses, every option says what it is."""

import argparse
import re

import pytest

from meshemu.cli import build_parser

# "(default 25)", "(default: 10)", or a bare "(1)" at the end of a help text
_DEFAULT = re.compile(r"\(default:? ([^\s()]+)\)")
_BARE = re.compile(r"\(([^\s()]+)\)\s*$")


def _commands(parser, prefix=()):
    """(path, parser) for the parser and every subparser under it."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, prefix + (name,))


COMMANDS = list(_commands(build_parser()))


def _shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _help(action) -> str:
    return action.help % {**vars(action), "prog": "meshemu"} if action.help else ""


@pytest.mark.parametrize("path,parser", COMMANDS, ids=[" ".join(p) or "meshemu" for p, _ in COMMANDS])
class TestHelp:
    def test_help_renders(self, path, parser):
        assert parser.format_help().startswith("usage:")

    def test_shown_defaults_are_the_real_ones(self, path, parser):
        wrong = []
        for action in parser._actions:
            text = _help(action)
            shown = _DEFAULT.findall(text)
            bare = _BARE.search(text)
            if bare and action.default is not None and not isinstance(action.default, bool):
                shown.append(bare.group(1))
            for value in shown:
                if value.rstrip(",;.") != _shown(action.default):
                    wrong.append(f"{'/'.join(action.option_strings)} shows {value!r}, "
                                 f"argparse's default is {action.default!r}")
        assert not wrong

    def test_every_option_has_help(self, path, parser):
        missing = [a.option_strings or a.dest for a in parser._actions
                   if a.help is None and not isinstance(a, argparse._SubParsersAction)]
        assert not missing

    def test_group_titles_are_for_users(self, path, parser):
        # internal tracker numbers mean nothing to someone reading --help
        titles = [g.title or "" for g in parser._action_groups]
        assert not [t for t in titles if re.search(r"\bissue\b|#\d", t)]


def test_the_walk_sees_every_subcommand():
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"rtt", "topology", "generate", "run", "emulate", "bench topology"} <= names


@pytest.mark.parametrize("old,new", [("--duration-s", "--duration"), ("--step-s", "--step"), ("--start-s", "--start")])
def test_a_retired_spelling_is_refused_with_the_new_one(capsys, old, new):
    from meshemu.cli import main

    assert main(["generate", "hi", "--loopback", old, "5"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{old} is now {new}" in err, err


def test_every_window_is_spelled_start_duration_step():
    """One spelling across subcommands: no live option spells the window with an -s suffix."""
    for path, parser in COMMANDS:
        for action in parser._actions:
            for option in action.option_strings:
                if action.help == argparse.SUPPRESS:
                    continue  # a retired spelling, refused
                assert option not in ("--start-s", "--duration-s", "--step-s", "--window-s"), (path, option)
