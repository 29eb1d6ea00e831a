"""Orchestration around the domain package: the command line, environment set-up and DVC.

``liverlesion`` (the domain package) is pure logic and imports neither ZenML, MLflow nor DVC, so
it can be installed alone on a GPU machine or in a step image. What drives it from a workstation
sits here: ``cli`` (the ``liverlesion`` command), ``datastore`` (the DVC-versioned cohort) and
``environment`` (where ZenML and MLflow keep their state, their telemetry off).
"""
