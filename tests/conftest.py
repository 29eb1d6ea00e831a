import os
import tempfile

# Set before anything imports TensorFlow or ZenML: quiet logs, no analytics, and a throw-away ZenML
# store so that tests never touch a developer's own ~/.config/zenml or the project's state folder.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["ZENML_ANALYTICS_OPT_IN"] = "false"
os.environ["ZENML_CONFIG_PATH"] = tempfile.mkdtemp(prefix="liverlesion-test-zenml-")

#: The test files that take longest, longest first (CI on 2 cores, measured with ``--durations``). pytest-xdist
#: hands each test process a whole file at a time (``--dist loadfile``) in the order the files are collected, so
#: these go first and the short files fill in at the end; otherwise a long file started last (the default job,
#: a single test of ~5 minutes) kept one process busy while the other sat idle.
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


def pytest_collection_modifyitems(config, items):
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order
