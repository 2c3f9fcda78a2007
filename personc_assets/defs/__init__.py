"""Dagster wiring, one module per domain: main, privacy, lifecycle, audit; shared resources, IO, GPU pool."""
