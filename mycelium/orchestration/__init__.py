"""Prefect around the library: deployments with schedules and event triggers, work pools and
workers, concurrency limits, and the artifacts that the dashboard shows.

The library in the other subpackages never imports this one. Flows in ``flows/`` and the
``mycelium orchestrate`` command use it.
"""
