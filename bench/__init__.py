"""phase1's benchmark suite: `python -m bench` (full) or `python -m bench --quick` (smoke).

Every figure is measured beside plain RQ in the same run, on the real Redis (a database
number of the benchmark's own) and PostgreSQL (a database created for the run).
"""
