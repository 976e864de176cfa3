"""featlib: Bybit market data -> ML features, identical live and in batch.

Modules, one job each: schema (canonical tables), bybit (parse exchange messages), raw
(Parquet store), capture (recorded captures), features/ (the declarations), inputs (raw ->
feature inputs), compute (the one entry point), registry (YAML feature sets), targets,
splits, dataset (builder), checks (identity-rule checks), synthetic (demo data).
"""

__version__ = "0.1.0"
