"""The Kubeflow stack: its registration in ZenML (``stack``) and the ``kubeflow_gpu`` orchestrator flavour."""
