"""The running process: the server and its wiring, the one lifecycle (start, signal,
drain, stop), and ``--workers N`` (supervisor, workers, their control channel)."""
