"""The command line keeps its promises: one-line errors and the documented exit codes, the same option names
everywhere, ``--json`` alone on standard output, ``--project`` from anywhere, a reference that is its help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from liverlesion_ops.cli import app
from liverlesion_ops.cli.reference import command_paths, help_text, reference

REPO = Path(__file__).resolve().parents[1]
LIVERLESION = str(Path(sys.executable).with_name("liverlesion"))
#: commands a program calls and reads: each prints JSON alone on standard output with --json
JSON_COMMANDS = {
    ("run",),
    ("compare",),
    ("train-segmenter",),
    ("retrain",),
    ("export",),
    ("profile",),
    ("data",),
    ("import",),
    ("generate",),
    ("predict",),
    ("predict-batch",),
    ("models",),
    ("promote",),
    ("rollback",),
    ("audit",),
    ("schedule",),
    ("server", "start"),
    ("server", "stop"),
    ("server", "status"),
    ("server", "add-user"),
}


def liverlesion(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed command, as a user runs it."""
    return subprocess.run(
        [LIVERLESION, *args], cwd=cwd, env=env or os.environ, capture_output=True, text=True, timeout=300
    )


@pytest.fixture()
def outside(tmp_path):
    """A working directory outside any project, and an environment that names none."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVERLESION_", "ZENML_", "MLFLOW_"))}
    env.update(ZENML_CONFIG_PATH=str(tmp_path / "zenml"), LIVERLESION_HOME=str(tmp_path / "state"))
    return tmp_path, env


def test_the_reference_in_docs_is_what_the_commands_help_says():
    assert (REPO / "docs" / "cli.md").read_text() == reference(), "run `make docs`"


def options_of(*path: str) -> set[str]:
    command = typer.main.get_command(app)
    context = command.context_class(command, info_name="liverlesion")
    for name in path:
        command = command.get_command(context, name)
        context = command.context_class(command, info_name=name, parent=context)
    return {opt for param in command.params for opt in getattr(param, "opts", [])}


def test_every_command_spells_its_options_the_same_way():
    paths = command_paths()
    assert len(paths) >= 20
    for path in paths:
        options = options_of(*path)
        if not options:  # a group
            continue
        assert "--name" not in options, path  # a registered model is --model everywhere
        if "--profile" in options:
            assert "-p" in options, path
        assert not any("_" in option for option in options), (path, options)  # --no-cache, never --no_cache
    for path in JSON_COMMANDS:
        assert "--json" in options_of(*path), path


def test_boolean_flags_show_no_value():
    assert "--no-cache <bool>" not in help_text("run") and "--no-cache " in help_text("run")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("run", "--bogus"), "No such option: --bogus (see 'liverlesion run --help')"),
        (("promote",), "Missing argument 'version'"),
        (("nosuch",), "No such command 'nosuch'"),
        (("run", "--set", "train.epochs"), "--set 'train.epochs': expected KEY=VALUE"),
        (("profile", "nonesuch"), "no profile 'nonesuch'"),
        (("profile", "--set", "train.epoch=3"), "train.epoch: Extra inputs are not permitted"),
    ],
)
def test_a_users_mistake_is_one_line_and_exit_2(args, expected, outside):
    _, env = outside
    done = liverlesion("--project", str(REPO), *args, cwd=REPO, env=env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], done.stderr
    assert "Traceback" not in done.stderr and "╭" not in done.stderr


def test_version():
    from liverlesion import __version__

    done = liverlesion("--version", cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip() == f"liverlesion {__version__}"


def test_outside_the_project_a_command_says_to_name_it_and_runs_with_project(outside):
    where, env = outside
    lost = liverlesion("profile", cwd=where, env=env)
    assert lost.returncode == 2 and lost.stderr.startswith("error: no data.dvc in ") and "--project" in lost.stderr
    found = liverlesion("--project", str(REPO), "profile", "paper", "--json", cwd=where, env=env)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["train"]["epochs"] == 103  # JSON alone on standard output
    by_variable = liverlesion("profile", "--json", cwd=where, env={**env, "LIVERLESION_PROJECT": str(REPO)})
    assert json.loads(by_variable.stdout)["name"] == "quick"


def test_json_output_is_alone_on_standard_output_and_progress_goes_to_standard_error(outside):
    where, env = outside
    out = where / "cohort"
    done = liverlesion(
        "--project",
        str(REPO),
        "generate",
        str(out),
        "--n-patients",
        "2",
        "--n-lesions",
        "2",
        "--json",
        cwd=where,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["path"] == str(out) and record["n_patients"] == 2 and (out / "cases.csv").exists()
    assert "[generate] 2/2" in done.stderr  # the progress lines went to standard error


def test_an_unknown_model_is_one_line_naming_it(outside):
    where, env = outside
    done = liverlesion("--project", str(REPO), "models", "--model", "nosuch", cwd=where, env=env)
    assert done.returncode == 2 and done.stderr.strip() == (
        f"error: no registered model 'nosuch' in sqlite:///{where / 'state' / 'mlflow' / 'mlflow.db'}"
    )


def test_retrain_takes_the_cohort_with_data(outside):
    """The cluster's retraining names its cohort on the shared volume (docs/team.md); a folder holding none is
    refused in one line before any work."""
    where, env = outside
    done = liverlesion("--project", str(REPO), "retrain", "--data", str(where), cwd=where, env=env)
    assert done.returncode == 2 and "no cases.csv: not a cohort folder" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


LEAVING = """
import atexit, sys, threading, time
from pathlib import Path
from liverlesion_ops.cli.common import leave
out = Path(sys.argv[1])
atexit.register(lambda: (out / "atexit").write_text("ran"))
def late():
    time.sleep(0.3)
    (out / "thread").write_text("done")
threading.Thread(target=late).start()
import concurrent.futures
idle = concurrent.futures.ThreadPoolExecutor(2)  # never shut down: its idle workers wait for work, as in a library
idle.submit(time.sleep, 0.01).result()
sys.stdout.write("buffered, no newline")
leave(eval(sys.argv[2]))
"""


@pytest.mark.parametrize(("status", "code"), [("None", 0), ("0", 0), ("3", 3), ("'a message'", 1)])
def test_leaving_keeps_what_pythons_exit_keeps(status, code, tmp_path):
    """The console script ends without tearing its modules down (``common.leave``), and loses nothing for it: the
    other threads finish, an idle thread pool a library left open does not hang it, the ``atexit`` handlers run,
    standard output is flushed, the exit status is Python's."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # standard output buffered, as a pipe is
    done = subprocess.run(
        [sys.executable, "-c", LEAVING, str(tmp_path), status], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == code, done.stderr
    assert done.stdout == "buffered, no newline"
    assert (tmp_path / "atexit").read_text() == "ran" and (tmp_path / "thread").read_text() == "done"
    assert done.stderr == ("a message\n" if code == 1 else "")


def test_each_error_a_command_knows_has_its_exit_code():
    """``common.exit_code_of`` looks an error's class up only among the modules loaded (a module never imported
    raised nothing): each class still maps to its documented code, the lock before the registry it subclasses."""
    from liverlesion.config import ConfigError
    from liverlesion.contract import ContractError
    from liverlesion.dicomio import DicomSeriesError
    from liverlesion_ops.audit import RestoreError
    from liverlesion_ops.cli.common import exit_code_of, fail
    from liverlesion_ops.registry.locks import LockHeld
    from liverlesion_ops.registry.store import RegistryError
    from liverlesion_ops.runs import PipelineFailed
    from liverlesion_ops.tracking import TrackingServerError

    assert exit_code_of(fail("x", 1)) == 1 and exit_code_of(fail("x")) == 2
    assert exit_code_of(TrackingServerError("x")) == 4
    assert exit_code_of(LockHeld("x")) == 3 and exit_code_of(RegistryError("x")) == 2
    assert (
        exit_code_of(ContractError("x")) == exit_code_of(DicomSeriesError("x")) == exit_code_of(ConfigError("x")) == 2
    )
    assert exit_code_of(PipelineFailed("x", [])) == exit_code_of(RestoreError("x")) == 1
    assert exit_code_of(ValueError("x")) is None  # a bug: its traceback


def test_a_users_mistake_is_answered_without_loading_mlflow(outside):
    """`predict` refuses a missing CT before any store is opened, and finding the refusal's exit code costs no
    MLflow import (~1-2 s) either."""
    _, env = outside
    done = liverlesion(
        "--project", str(REPO), "predict", str(REPO / "no-such-ct.nii.gz"), "--mask", str(REPO / "no-such.nii.gz"),
        cwd=REPO, env={**env, "PYTHONPROFILEIMPORTTIME": "1"},
    )  # fmt: skip
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and [line for line in lines if line.startswith("error: ")], done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}
    assert imported and "mlflow" not in imported


def test_a_command_reads_the_installed_distributions_once_for_every_source_zenml_records(tmp_path):
    """ZenML asks ``importlib.metadata`` which distribution installs the module of each artefact type and
    materializer it records; once a command's environment is set, what is installed is read once, not per question.
    """
    code = """
import importlib.metadata as metadata
import json

from liverlesion_ops.environment import configure_environment

import numpy, pandas, yaml
from zenml.utils.source_utils import resolve

configure_environment()
scans = []
read = metadata.distributions
metadata.distributions = lambda **kwargs: scans.append(1) or read(**kwargs)
sources = [resolve(kind).package_name for kind in (pandas.DataFrame, numpy.ndarray, pandas.Series, yaml.SafeLoader)]
print(json.dumps({"sources": sources, "scans": len(scans)}))
"""
    env = {**os.environ, "LIVERLESION_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["sources"] == ["pandas", "numpy", "pandas", "PyYAML"]
    assert answer["scans"] == 1
