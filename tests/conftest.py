import os

# keep TensorFlow quiet and deterministic-ish in tests; set before anything imports it
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
