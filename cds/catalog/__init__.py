"""The catalogue file: its schema, loading and validation, the immutable Snapshot, diffs.

Offline by design: nothing here serves, reads results or evaluates an order, so
``cds catalog validate`` and ``diff`` run without a server.
"""
