"""Load, memory, ingest, reload and engine benchmarks for cds (issue 4); `make bench` runs them."""
