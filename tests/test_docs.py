"""The docs match the commands: the README is a front door, every link leads somewhere, and every
`liverlesion` command written in a docs code block parses as written (its subcommand, options and arguments
exist; nothing is run)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from liverlesion_ops.cli import app
from liverlesion_ops.cli.reference import command_paths

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "infra").rglob("*.md")])
#: where a command line ends: a pipe, a redirection, a second command, a comment
END = re.compile(r"\s(\||>|2>|&&|;|&|#)(\s|$)")


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.DOTALL)


def documented_commands() -> list[tuple[str, str]]:
    """Every ``liverlesion ...`` command of a bash block in the docs: (file, command line), continuations joined."""
    found = []
    for doc in DOCS:
        for block in code_blocks(doc.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                line = END.split(line, maxsplit=1)[0].strip()
                words = line.split()
                while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value before the command
                    words.pop(0)
                if words and words[0].split("/")[-1] == "liverlesion":
                    found.append((doc.relative_to(REPO).as_posix(), " ".join(words)))
    return found


COMMANDS = documented_commands()


def test_the_readme_is_a_front_door():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 150
    text = "\n".join(lines)
    assert "make run" in text and "make test" in text and "liverlesion predict" in text  # two commands, a tour


def test_the_docs_write_many_commands():
    assert len(COMMANDS) >= 25 and {doc for doc, _ in COMMANDS} >= {"README.md", "docs/data.md", "docs/team.md"}


@pytest.mark.parametrize(("doc", "line"), COMMANDS, ids=[f"{d}: {c[:60]}" for d, c in COMMANDS])
def test_every_documented_command_parses_as_written(doc, line):
    args = shlex.split(line)[1:]
    while args and args[0] == "--project":  # the one option before a command
        args = args[2:]
    paths = sorted(command_paths(), key=len, reverse=True)
    path = next((p for p in paths if tuple(args[: len(p)]) == p), None)
    assert path is not None, f"{doc}: no command in {line!r}"
    command = typer.main.get_command(app)
    context = command.context_class(command, info_name="liverlesion")
    for name in path:
        command = command.get_command(context, name)
        context = command.context_class(command, info_name=name, parent=context)
    assert not hasattr(command, "list_commands"), f"{doc}: {line!r} names a group, not a command"
    command.make_context(path[-1], args[len(path) :], parent=context.parent)  # a bad option or argument raises


def test_every_link_in_the_docs_leads_to_a_file_and_a_heading_there():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            where = (doc.parent / path).resolve() if path else doc
            if not where.exists():
                broken.append(f"{doc.name}: {target}")
            elif anchor and where.suffix == ".md":
                headings = {_anchor(h) for h in re.findall(r"^#+ (.+)$", where.read_text(), flags=re.MULTILINE)}
                if anchor not in headings:
                    broken.append(f"{doc.name}: {target} (no such heading)")
    assert broken == []


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
