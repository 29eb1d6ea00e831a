import os
import tempfile

import pytest

# Set before anything imports TensorFlow or ZenML: quiet logs, no analytics, and a throw-away ZenML
# store so that tests never touch a developer's own ~/.config/zenml or the project's state folder.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["ZENML_ANALYTICS_OPT_IN"] = "false"
os.environ["ZENML_CONFIG_PATH"] = tempfile.mkdtemp(prefix="liverlesion-test-zenml-")

#: The test files that take longest, longest first (CI on 2 cores, measured with ``--durations``). pytest-xdist
#: hands each test process a whole file at a time (``--dist loadfile``; the files of ``SHARED_PROJECT_FILES``
#: as one) in the order the files are collected, so these go first and the short files fill in at the end;
#: otherwise a long file started last (the default job, a single test of ~5 minutes) kept one process busy while
#: the other sat idle.
LONGEST_FIRST = (
    "test_pipeline_integration.py",
    "test_operations_integration.py",
    "test_default_job.py",
    "test_containers.py",
    "test_segmentation_integration.py",
    "test_resume_integration.py",
    "test_team_server.py",
    "test_real_data_integration.py",
    "test_train_gpu.py",
)


#: Files that use the session's tiny project (``tiny_project``, ``tiny_first_run``): one test process runs them
#: one after the other, so the containers test compares its run with the first run the pipeline tests made, read
#: back from cache, instead of training the tiny model once more on the local orchestrator.
SHARED_PROJECT_FILES = ("test_pipeline_integration.py", "test_containers.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile``, with the files of ``SHARED_PROJECT_FILES`` handed out as one (pytest-xdist's
    ``loadgroup`` reads no group from a test id under pytest 9)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedProjectScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return "tiny-project" if scope.rsplit("/", 1)[-1] in SHARED_PROJECT_FILES else scope

    return SharedProjectScheduling(config, log)


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory):
    """A project with the ``tiny`` profile (and ``unbalanced``, which fails validation), shared by the files of
    ``SHARED_PROJECT_FILES``. Those of their tests that train again compare with what they find before they run,
    register under another model name, or name version 1 explicitly; none changes the project's data."""
    import yaml
    from integration_support import TINY_PROFILE, make_project

    root, env = make_project(tmp_path_factory.mktemp("project"))
    bad = {
        **TINY_PROFILE,
        "name": "unbalanced",
        "validation": {"min_metastasis_fraction": 0.9, "max_metastasis_fraction": 1.0},
    }
    (root / "configs" / "unbalanced.yaml").write_text(yaml.safe_dump(bad))
    return root, env


@pytest.fixture(scope="session")
def tiny_first_run(tiny_project):
    """The first `liverlesion run --profile tiny` in ``tiny_project``: it registers version 1 of the tiny model."""
    from integration_support import cli

    root, env = tiny_project
    return cli(root, env, "run", "--profile", "tiny")
