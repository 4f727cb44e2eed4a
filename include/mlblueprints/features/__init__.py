"""Feature views: offline (Iceberg) and online stores fed from one batch, point-in-time training sets.

``core`` is pure; ``local`` and ``online`` are the local target (DuckDB, Iceberg, SQLite);
``aws`` is SageMaker Feature Store. Import the submodule you need: this package imports nothing
heavy.
"""
