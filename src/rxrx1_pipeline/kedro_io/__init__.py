"""Kedro IO: the project's data catalog (atomic saves) and its custom datasets, which hand the
``storage`` objects to nodes."""
