"""The reports the patterns wrote, found where they wrote them (``index``), and a web view of
them (``web``, the FastAPI app the Airflow plugin in plugins/ mounts)."""
