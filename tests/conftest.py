import os
import tempfile

# Set before anything imports TensorFlow or ZenML: quiet logs, no analytics, and a throw-away ZenML
# store so that tests never touch a developer's own ~/.config/zenml or the project's state folder.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["ZENML_ANALYTICS_OPT_IN"] = "false"
os.environ["ZENML_CONFIG_PATH"] = tempfile.mkdtemp(prefix="liverlesion-test-zenml-")
