"""What every command shares: its options, the one error path, the project set-up, and JSON on standard output.

The error path (``main``): a user's mistake (a bad option, profile, file, version) is one line on standard
error and exit 2; work that failed (a pipeline step, DVC, the registry) exit 1; a lock another process holds,
exit 3; a tracking server that refused the credentials or a permission, or cannot be reached, exit 4. No
traceback for any of them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer.exceptions import TyperException

#: exit codes of every command (``liverlesion --help`` and docs/cli.md say them)
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY, EXIT_SERVER = 0, 1, 2, 3, 4
EXIT_CODES_HELP = (
    "Exit codes: 0 done; 1 the work failed (a pipeline step, DVC, the registry); 2 a usage or input error (bad "
    "option, profile, data or version), named in one line; 3 another process holds a lock the command needs "
    "(the project's training lock, the registry lock), named; 4 the MLflow tracking server (MLFLOW_TRACKING_URI) "
    "refused the credentials (MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD) or a permission, or cannot be "
    "reached."
)
DEFAULT_PROFILE = "quick"


class CommandError(Exception):
    """What a command says instead of its result: one line, and the exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = EXIT_USAGE) -> CommandError:
    """``raise fail("...")``: stop the command with one line on standard error and ``code``."""
    return CommandError(message, code)


# --- options every command spells the same way ------------------------------------------------------------

ProfileOption = Annotated[
    str, typer.Option("--profile", "-p", help="a profile name in the project's configs/, or a YAML path")
]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="override a setting, e.g. --set train.epochs=2")
]
DataOption = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="the cohort folder to use (default: the project's DVC-tracked data/); any folder holding cases.csv, "
        "versioned by its content hash",
    ),
]
NoCacheOption = Annotated[bool, typer.Option("--no-cache", help="re-run every step instead of reusing cached ones")]
JsonOption = Annotated[
    bool,
    typer.Option("--json", help="print the result as one JSON object on standard output (progress: standard error)"),
]
VersionOption = Annotated[
    str | None, typer.Option("--version", help="a registered version (3 or v3) instead of the 'champion' alias")
]
ModelOption = Annotated[
    str | None, typer.Option("--model", help="the registered model (default: the profile's register.model_name)")
]
SegmentOption = Annotated[
    str | None,
    typer.Option(
        "--segment",
        help="the automatic segmentation: classical (thresholds and morphology) or learned (the registered "
        "cascade); default: the profile's segment.method, classical where it is reference",
    ),
]
SegmenterOption = Annotated[
    str | None,
    typer.Option(
        "--segmenter",
        help="with --segment learned: the cascade as <model>@<alias> or <model>@<version> (default: the profile's "
        "segment.learned_model)",
    ),
]
ReasonOption = Annotated[str, typer.Option("--reason", help="why (recorded on the versions and in an MLflow run)")]


# --- the project and its settings ---------------------------------------------------------------------------


def setup(tracking: bool = True) -> dict[str, str]:
    """Export where ZenML, MLflow and DVC keep their state (nothing phones home); with ``tracking``, check that
    a tracking server (``MLFLOW_TRACKING_URI=http...``) takes the credentials.

    Raises:
        CommandError: not inside a project (exit 2); a tracking server that refuses or is gone (exit 4).
    """
    from liverlesion_ops.environment import configure_environment

    try:
        values = configure_environment()  # before MLflow is imported: it reads its logging level once
    except FileNotFoundError as err:
        raise fail(str(err)) from None
    from liverlesion_ops.tracking import TrackingServerError, check_server

    if tracking:
        try:
            check_server(values["MLFLOW_TRACKING_URI"])
        except TrackingServerError as err:
            raise fail(str(err), EXIT_SERVER) from None
    return values


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``train.epochs=2`` -> ``{"train": {"epochs": 2}}`` (values parsed as YAML)."""
    import yaml

    result: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise fail(f"--set {pair!r}: expected KEY=VALUE, e.g. train.epochs=2")
        key, value = pair.split("=", 1)
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return result


def load_profile(name: str, overrides: list[str] | None = None, keras_backend: bool = True):
    """The profile with the ``--set`` overrides; with ``keras_backend`` (commands whose steps load Keras), its
    ``train.backend`` made the one Keras loads.

    Raises:
        CommandError: naming the file and every bad key, or a backend that is missing or clashes (exit 2).
    """
    from liverlesion.config import ConfigError
    from liverlesion.config import load_profile as load
    from liverlesion_ops import project
    from liverlesion_ops.environment import use_keras_backend

    try:
        profile = load(name, project.configs_dir(), parse_overrides(overrides))
        if keras_backend:
            use_keras_backend(profile.train.backend)  # before anything loads Keras
    except (ConfigError, RuntimeError, FileNotFoundError) as err:
        raise fail(str(err)) from None
    return profile


# --- output ---------------------------------------------------------------------------------------------------


@contextmanager
def json_output(as_json: bool) -> Iterator[None]:
    """With ``--json``, everything the work prints goes to standard error, so that standard output holds the
    JSON alone."""
    if not as_json:
        yield
        return
    with redirect_stdout(sys.stderr):
        yield


def print_json(value: Any) -> None:
    """Strict JSON (a measure not taken is null, never NaN) on standard output."""
    from liverlesion.report import strict_json

    typer.echo(strict_json(value, indent=2, sort_keys=True, default=str))


def automatic_segmentation(settings, segment: str | None, segmenter: str | None):
    """The profile's ``segment`` settings with ``--segment`` and ``--segmenter`` applied: the method is
    ``--segment``, else the profile's where it is automatic, else classical.

    Raises:
        CommandError: a method other than classical or learned (exit 2).
    """
    method = segment or (settings.method if settings.automatic else "classical")
    if method not in ("classical", "learned"):
        raise fail(f"--segment {method!r}: classical or learned")
    return settings.model_copy(update={"method": method, "learned_model": segmenter or settings.learned_model})


def say(text: str) -> None:
    typer.echo(text)


def note(text: str) -> None:
    """One line on standard error that is neither a result nor a problem (``--json`` keeps standard output)."""
    typer.echo(f"note: {text}", err=True)


def warn(text: str) -> None:
    typer.echo(f"warning: {text}", err=True)


def tools_dir() -> Path:
    """Where this installation's commands are (``mlflow``, ``zenml``, ``liverlesion``)."""
    return Path(sys.executable).parent


# --- the one error path ---------------------------------------------------------------------------------------


def _loaded(module: str, *names: str) -> tuple[type[BaseException], ...]:
    """The error classes ``names`` of ``module`` where it is loaded; none where it is not (nothing it defines can
    have been raised, and importing it to find out would cost a one-line error seconds: MLflow, Great
    Expectations)."""
    found = sys.modules.get(module)
    return tuple(getattr(found, name) for name in names) if found is not None else ()


def exit_code_of(err: BaseException) -> int | None:
    """The exit code of an error a command may raise (None: a bug, shown with its traceback)."""
    order: list[tuple[tuple[type[BaseException], ...], int]] = [
        ((CommandError,), -1),
        (_loaded("liverlesion_ops.tracking", "TrackingServerError"), EXIT_SERVER),
        (_loaded("liverlesion_ops.registry.locks", "LockHeld"), EXIT_BUSY),
        (
            _loaded("liverlesion_ops.datastore", "NotACohort")
            + _loaded("liverlesion.contract", "ContractError")
            + _loaded("liverlesion.config", "ConfigError")
            + _loaded("liverlesion_ops.registry.store", "RegistryError")
            + _loaded("liverlesion_ops.runs", "WeightsMissing")
            + _loaded("liverlesion_ops.team_server", "ServerUsageError"),
            EXIT_USAGE,
        ),
        (_loaded("liverlesion_ops.schedule", "ScheduleError"), EXIT_USAGE),
        (
            _loaded("liverlesion_ops.runs", "PipelineFailed")
            + _loaded("liverlesion_ops.datastore", "DataStoreError")
            + _loaded("liverlesion_ops.dvcobjects", "DvcObjectsError")
            + _loaded("liverlesion_ops.audit", "RestoreError")
            + _loaded("liverlesion_ops.team_server", "ServerFailed"),
            EXIT_FAILED,
        ),
    ]
    for kinds, code in order:
        if isinstance(err, kinds):
            return err.code if isinstance(err, CommandError) else code
    return None


def main(app: typer.Typer, argv: list[str] | None = None) -> None:
    """Run the command line; every error it knows becomes one line on standard error and its exit code."""
    from liverlesion_ops import logs

    logs.configure()
    try:
        code = app(args=argv, prog_name="liverlesion", standalone_mode=False)
    except TyperException as err:  # the parser's: a usage error (bad option, missing argument, bad value)
        message = one_line(err.format_message() if hasattr(err, "format_message") else str(err))
        ctx = getattr(err, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None and err.exit_code == EXIT_USAGE else ""
        typer.echo(f"error: {message}{hint}", err=True)
        sys.exit(err.exit_code)
    except typer.Abort:
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
    except Exception as err:
        from liverlesion_ops.tracking import server_problem

        problem = server_problem(err)  # the tracking server's refusal, wherever in a command it happened
        if problem is not None:
            typer.echo(f"error: {problem}", err=True)
            sys.exit(EXIT_SERVER)
        code = exit_code_of(err)
        if code is None:
            raise
        typer.echo(f"error: {one_line(str(err))}", err=True)
        for detail in getattr(err, "details", []):
            typer.echo(f"  {detail}", err=True)
        sys.exit(code)
    sys.exit(code if isinstance(code, int) else EXIT_OK)


def leave(status: int | str | None) -> NoReturn:
    """End the console command with ``status`` (``SystemExit.code``'s meaning) as Python's own exit would, less
    the tearing down of every loaded module, which takes ~1.6 s once TensorFlow, Keras and MLflow are loaded
    (``bench/predict_cold.py`` against a revision before it): the threading module's exit hooks run and the other
    threads that are not daemons are waited for (``threading._shutdown``, as Python's own exit), the ``atexit``
    handlers run (logging's flush, MLflow's, every ``weakref.finalize``), the standard streams are flushed, then
    the process ends.
    """
    import atexit
    import os
    import threading

    # what Python's finalisation does first, in its order: the threading module's exit hooks (they stop idle
    # thread-pool workers, which would otherwise wait for work forever), then the other threads joined
    threading._shutdown()
    if isinstance(status, str):  # sys.exit("message"): the message on standard error, exit 1
        typer.echo(status, err=True)
        status = EXIT_FAILED
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(status or EXIT_OK)


def one_line(text: str) -> str:
    return " ".join(text.split()) or "failed"
