"""Where users run the project: the dependency sets (``requirements``), the MWAA bundle and its
upload (``mwaa``), the Astro project (``astro``) and the local Airflow UI (``local``)."""
