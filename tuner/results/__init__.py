"""Results: the answer (finalists, replicates, statistics, cost) and the study's summary,
including what the parent MLflow run records."""
