"""Benchmarks of the analytics service against the raw engine, measured in one run.

Each benchmark module measures one figure family (query overhead, FINAL cost, streaming,
ingestion, freshness) and returns rows of ``bench.report.Figure``; ``python -m bench`` runs the
selected ones and prints one table. Ratios, not absolute times, are what the targets judge: A and B
run interleaved in one process tree on the same machine, so noise hits both alike.
"""
