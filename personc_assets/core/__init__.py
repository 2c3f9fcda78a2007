"""PersonC's framework-free core library (never imports Dagster)."""
