"""ZenML steps: thin wrappers over the ``liverlesion`` domain package, one per file."""
