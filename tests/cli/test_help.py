"""Every command's --help shows its help texts whole, at any terminal width.

Help is click's plain text (``rich_markup_mode=None``): typer's rich tables cut option names and words to fit an
80-column terminal (``--requests-in-fl…``, ``'package.module…``), and rich read ``[word ...]`` as markup and dropped it
(``[default: 8]``, ``[replay]``, ``local:DIR[@ADAPTER]``) unless written ``\\[``. This walks the real command tree and
checks every bracketed fragment of every help text reaches the screen as written, and every option's name is whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from ee_middleware.cli.app import app

# What rich would take for a tag: "[" then a letter, "#", "/" or "@" (rich.markup's own rule).
_TAG_LIKE = re.compile(r"\[([a-z#/@][^\[\]]*)\]")


def _commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    # Typer vendors click (typer._click), so the tree is walked by shape, not by click's classes.
    yield path, group
    for name, command in getattr(group, "commands", {}).items():
        yield from _commands(command, (*path, name))


def _bracketed(text: str | None) -> list[str]:
    return [f"[{m.group(1)}]" for m in _TAG_LIKE.finditer(text or "")]


COMMANDS = list(_commands(typer.main.get_command(app)))


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) or "ee" for p, _ in COMMANDS])
def test_help_keeps_bracketed_text(path: tuple[str, ...], command: Any) -> None:
    expected = _bracketed(command.help)
    for param in command.params:
        expected += _bracketed(getattr(param, "help", None))
    if not expected:
        return
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "2000", "TERMINAL_WIDTH": "2000"})
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    missing = [fragment for fragment in expected if " ".join(fragment.split()) not in flat]
    assert not missing, f"`ee {' '.join(path)} --help` lost {missing}"
    assert "\\[" not in result.output, f"`ee {' '.join(path)} --help` shows a markup escape: write '[' as it is"


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) or "ee" for p, _ in COMMANDS])
def test_help_in_an_80_column_terminal_cuts_nothing(path: tuple[str, ...], command: Any) -> None:
    # 80 columns is also what a pipe gets (`ee replay run --help | less`).
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert result.exit_code == 0, result.output
    assert "\u2026" not in result.output, f"`ee {' '.join(path)} --help` cuts text short:\n{result.output}"
    words = set(result.output.replace(",", " ").split())
    cut = [name for option in _options(command) for name in (*option.opts, *option.secondary_opts) if name not in words]
    assert not cut, f"`ee {' '.join(path)} --help` does not show {cut} whole:\n{result.output}"


def test_the_walk_sees_bracketed_help() -> None:
    # The check above must have something to check: the replay command's --k help says its default.
    replay_run = dict(COMMANDS)[("replay", "run")]
    assert any(_bracketed(p.help) for p in replay_run.params)


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) or "ee" for p, _ in COMMANDS])
def test_each_command_is_summed_up_in_one_line(path: tuple[str, ...], command: Any) -> None:
    # A group's command list shows the first paragraph with its line breaks: a paragraph wrapped in the source
    # broke mid-sentence there ("have MODEL write variants of the" / "highest-scoring ones").
    first = (command.help or "").strip().split("\n\n")[0]
    assert "\n" not in first, f"`ee {' '.join(path)}`: start the help with a one-line summary, then a blank line"


def _options(command: Any) -> list[Any]:
    return [
        p
        for p in command.params
        if getattr(p, "param_type_name", "") == "option" and "--help" not in p.opts and not getattr(p, "hidden", False)
    ]


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) or "ee" for p, _ in COMMANDS])
def test_every_option_says_what_it_does(path: tuple[str, ...], command: Any) -> None:
    # `ee train --seed`, `ee serve vllm --max-loras` and others showed a bare name (or only "[default: 2e-4]").
    bare = [p.opts[0] for p in _options(command) if not re.sub(r"\\?\[default:[^\]]*\]", "", p.help or "").strip()]
    assert not bare, f"`ee {' '.join(path)} --help`: {bare} say nothing about what they do"


SHOWN_DEFAULTS = {
    ("eval", "run"): ["--trials", "--workers", "--seed", "--temperature", "--max-tokens", "--max-steps-per-turn", "--timeout"],
    ("train",): ["--output-dir", "--seed", "--learning-rate"],
    ("improve",): ["--schedule"],
}


@pytest.mark.parametrize("path", list(SHOWN_DEFAULTS), ids=" ".join)
def test_options_whose_value_comes_from_a_default_show_it(path: tuple[str, ...]) -> None:
    # Their flag defaults to None (so that a config file can set them), which hid the value the job then uses.
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "2000", "TERMINAL_WIDTH": "2000"})
    assert result.exit_code == 0, result.output
    entries: dict[str, str] = {}  # each option's entry: its line and the indented lines under it
    name = ""
    for line in result.output.splitlines():
        if line.startswith("  -"):
            names = [word.rstrip(",") for word in line.split() if word.startswith("-")]
            name = next((n for n in names if n.startswith("--")), names[0])
            entries[name] = line
        elif name and line.startswith("    "):
            entries[name] += " " + line.strip()
        else:
            name = ""
    missing = [option for option in SHOWN_DEFAULTS[path] if "[default:" not in entries.get(option, "")]
    assert not missing, f"`ee {' '.join(path)} --help` shows no default for {missing}"
