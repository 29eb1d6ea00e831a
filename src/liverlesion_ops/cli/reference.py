"""The command-line reference (``docs/cli.md``), written from the commands' own ``--help``: ``make docs``.

``tests/test_cli.py`` checks that the file in the checkout is what this writes, so the reference cannot fall
behind the commands.
"""

from __future__ import annotations

import typer

#: the width the help is wrapped at in the reference (the terminal's does not matter)
WIDTH = 100
HEADER = """# Command-line reference

Every command of `liverlesion`, as its own `--help` prints it. Written by `make docs`
(`python -m liverlesion_ops.cli.reference > docs/cli.md`) and checked by the tests: do not edit by hand.
Conventions every command keeps: one line on standard error for an error, `error: ...`, and the exit codes
below; `--json` prints one JSON object alone on standard output (progress goes to standard error);
`--profile` names a profile of the project's `configs/`, `--set KEY=VALUE` overrides one of its settings,
`--model` names a registered model (default: the profile's `register.model_name`).
"""


def help_text(*path: str) -> str:
    """What ``liverlesion PATH... --help`` prints, wrapped at ``WIDTH``."""
    from liverlesion_ops.cli import app

    command = typer.main.get_command(app)
    context = command.context_class(command, info_name="liverlesion", terminal_width=WIDTH, max_content_width=WIDTH)
    for name in path:
        command = command.get_command(context, name)
        context = command.context_class(
            command, info_name=name, parent=context, terminal_width=WIDTH, max_content_width=WIDTH
        )
    return command.get_help(context).rstrip()


def command_paths() -> list[tuple[str, ...]]:
    """Every command and subcommand, in the order ``--help`` lists them."""
    from liverlesion_ops.cli import app

    root = typer.main.get_command(app)
    context = root.context_class(root, info_name="liverlesion")
    found: list[tuple[str, ...]] = []

    def walk(group, ctx, prefix: tuple[str, ...]) -> None:
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            found.append((*prefix, name))
            if hasattr(command, "list_commands"):
                walk(command, command.context_class(command, info_name=name, parent=ctx), (*prefix, name))

    walk(root, context, ())
    return found


def reference() -> str:
    """The whole reference, markdown."""
    parts = [HEADER, "## liverlesion\n", "```text", help_text(), "```\n"]
    for path in command_paths():
        parts += [f"## liverlesion {' '.join(path)}\n", "```text", help_text(*path), "```\n"]
    return "\n".join(parts)


if __name__ == "__main__":
    print(reference(), end="")  # noqa: T201 (the reference goes to standard output)
