"""The pure parts of `make bench-autoscale` (benchmarks/bench_autoscale.py):
the seeded workloads, the metrics over recorded timelines, the KEDA objects
and the report. Nothing here talks to a cluster; tests/unit covers it."""
