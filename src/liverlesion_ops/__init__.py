"""Orchestration around the domain package: the pipelines and their steps, tracking, the registry, DVC, data
validation, the command line, the team server and the cluster.

``liverlesion`` (the domain package) is pure logic and imports none of this, so it can be installed alone
on a GPU machine or in a step image. Here, by layer (each imports only the layers above it in this list,
``tests/test_layers.py`` checks it):

1. ``project``, ``environment``, ``logs``: where the project and its state are; ZenML's and MLflow's
   settings, telemetry off; where log lines go.
2. ``tracking``, ``datastore``, ``dvcobjects``, ``validation``, ``registry`` (a package), ``segmenters``,
   ``audit``, ``team_server``, ``kubeflow``: MLflow, DVC, Great Expectations and the cluster, as library calls.
3. ``steps``: ZenML steps, one per file, each a thin wrapper over the domain package.
4. ``pipelines``: ZenML pipelines, wiring only.
5. ``runs``, ``retrain``, ``prediction``, ``evaluation``, ``importing``, ``schedule``: what each command does, as a
   library call.
6. ``cli``: the ``liverlesion`` command (parsing, the one error path, reporting).

``lesion_classifier`` is the served model, logged "from code" with the domain package beside it: it imports
only ``liverlesion`` and MLflow.
"""
