"""What every pattern shares: names, DuckDB connections, typed step results, the run report,
service calls and the step context. Pure and light: nothing here imports Airflow or a heavy
library at module level."""
