"""The MLflow model registry: versions, the aliases that say where they stand, and every decision.

Modules: ``store`` (the client, aliases, errors), ``locks`` (this machine's lock and the tracking store's),
``registration`` (the served model, versions, incomplete registrations), ``decisions`` (the registry lock,
the journal, applying a decision), ``gate`` (the promotion gate of a trained version) and ``manual``
(``promote``, ``rollback``).

Aliases: ``champion`` (what ``predict`` and serving load), ``challenger`` (the latest version that
passed the floors but not the margin), ``previous_champion`` (the champion before the current one:
what ``rollback`` returns to).

A version is registered with every lineage tag at once (idempotent per training run: a cached model
re-registered by a re-run step gets no second version). Decisions (the gate's, a manual promotion,
a rollback) are taken under a registry lock, recorded on the versions (tags) and as an MLflow run
(tag ``job``), and only then do aliases move. MLflow's alias update is last-writer-wins, so the lock
serialises deciders, and every move is verified by reading the aliases back. The lock is two locks:
a file lock (``<state>/locks``: the processes of one machine and state folder) and, in the tracking
store itself, a registered model ``<name>.registry-lock`` that exists while a decider holds it
(creating a registered model is atomic in MLflow's store, so deciders on every machine that share
a tracking server are serialised; a lock whose holder died is broken: at once on its own machine,
after ``SERVER_LOCK_LEASE_S`` elsewhere). It is never deleted by its name, but renamed to a name used
once and deleted as that: a request MLflow's client repeats cannot remove the next decider's lock.
The record and the moves are written to a journal first (a file, and a tag of the store's lock): a
decider killed half-way is completed by the next one that takes the lock, unless a later decision has
moved the aliases since; so no interrupted decision leaves one alias moved and another not.

A version registered by the pipeline (``register_and_gate``) is *incomplete*
(``registration_state=incomplete``, its ``fingerprint`` held back as ``fingerprint_pending``)
until its gate decision is recorded (``complete``). If the run fails in between, the version is
deleted; if even that fails (the tracking server went away), the leftover stays marked incomplete:
no alias names it, ``promote`` and ``predict`` refuse it, ``retrain`` does not count it as trained,
and the next registry operation (any decision, or registering the same training run again) deletes
or completes it once its registering process is gone.
"""
