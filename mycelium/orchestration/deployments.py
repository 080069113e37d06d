"""The deployments of a Mycelium project: what runs on which pool, on which schedule or event.

| deployment | flow | pool | started by |
|---|---|---|---|
| ``sweep`` | ``flows/sweep.py`` | light | the cron schedule ``orchestration.sweep_cron`` |
| ``ingest`` | ``flows/ingest.py`` | light | a request (``prefect deployment run`` or ``run_deployment``) |
| ``train-patch`` | ``flows/train_patch.py`` | training | each ``mycelium.drift.detected`` event |
| ``train-expert`` | ``flows/train_expert.py`` | training | each ``mycelium.domain.new`` event |
| ``remember`` | ``flows/remember.py`` | training | each ``mycelium.domain.requested`` event |

Trigger parameters are single Jinja expressions such as ``{{ event.payload.window }}``, which
Prefect 3.9 renders with their JSON type, so ``window`` arrives as an int and ``scores`` as a
dict. A parameter whose type does not match the flow's signature makes the server reject the
run; it logs the error and creates no run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mycelium.config import Orchestration
from mycelium.orchestration.events import (
    COLD_DOMAIN_REQUESTED,
    DRIFT_DETECTED,
    NEW_DOMAIN_DETECTED,
    RESOURCE_PREFIX,
)

# The payload fields that every request event carries, as flow parameters.
EVENT_PARAMETERS = {
    name: "{{ event.payload.%s }}" % name
    for name in ("domain", "window", "scores", "rows", "data_path", "version", "bundle_version")
}


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment: its flow's entrypoint, its pool, and the schedule or event that starts it."""

    name: str
    entrypoint: str
    pool: str
    description: str
    cron: str | None = None
    event: str | None = None
    tags: list[str] = field(default_factory=list)


def deployment_specs(settings: Orchestration) -> list[DeploymentSpec]:
    """Return the project's deployments for the pools and schedule in ``settings``."""
    return [
        DeploymentSpec("sweep", "flows/sweep.py:sweep_flow", settings.light_pool,
                       "Move idle hot domains to cold storage; a run later than late_sweep_after_s is skipped.",
                       cron=settings.sweep_cron, tags=["cold-storage"]),
        DeploymentSpec("ingest", "flows/ingest.py:ingest_flow", settings.light_pool,
                       "Route, validate and check one batch file for drift; emits events for the actions.",
                       tags=["ingest"]),
        DeploymentSpec("train-patch", "flows/train_patch.py:train_patch_flow", settings.training_pool,
                       "Train a patch beside the frozen expert of a drifting domain.",
                       event=DRIFT_DETECTED, tags=["training"]),
        DeploymentSpec("train-expert", "flows/train_expert.py:train_expert_flow", settings.training_pool,
                       "Train an expert for a new domain on its queued rows.",
                       event=NEW_DOMAIN_DETECTED, tags=["training"]),
        DeploymentSpec("remember", "flows/remember.py:remember_flow", settings.training_pool,
                       "Restore a cold domain through the validation gate, then serve its waiting batches.",
                       event=COLD_DOMAIN_REQUESTED, tags=["cold-storage", "training"]),
    ]


def _trigger(spec: DeploymentSpec, params_path: str) -> Any:
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name=f"mycelium {spec.name} on {spec.event}",
        expect={spec.event},
        match={"prefect.resource.id": f"{RESOURCE_PREFIX}*"},
        parameters={**EVENT_PARAMETERS, "params_path": params_path},
    )


def register_deployments(project_root: Path, params_path: Path, settings: Orchestration,
                         source: str | None = None) -> dict[str, str]:
    """Create or update every deployment; return deployment name -> id.

    Args:
        project_root: the folder that contains ``flows/``.
        params_path: the settings file every run reads, as an absolute path or relative to
            the folder a worker runs the flow in.
        settings: the ``orchestration`` settings.
        source: where workers get the code from. By default the project folder, which suits
            workers on this machine or on machines that mount it at the same path. For other
            machines pass a git URL that ``flow.from_source`` accepts.
    """
    from prefect import flow
    from prefect.schedules import Cron

    ids = {}
    for spec in deployment_specs(settings):
        loaded = flow.from_source(source=source or str(project_root), entrypoint=spec.entrypoint)
        deployment_id = loaded.deploy(
            name=spec.name,
            work_pool_name=spec.pool,
            build=False,
            push=False,
            schedules=[Cron(spec.cron, timezone=settings.timezone)] if spec.cron else None,
            triggers=[_trigger(spec, str(params_path))] if spec.event else None,
            parameters={"params_path": str(params_path)},
            description=spec.description,
            tags=["mycelium", *spec.tags],
            print_next_steps=False,
            ignore_warnings=True,
        )
        ids[f"{loaded.name}/{spec.name}"] = str(deployment_id)
    return ids


def create_pools(settings: Orchestration) -> list[str]:
    """Create the training and light process work pools unless they exist; return their names."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    descriptions = {
        settings.training_pool: "Training and Remembering; run its workers on accelerator machines.",
        settings.light_pool: "Ingestion and sweeps.",
    }
    with get_client(sync_client=True) as client:
        for name, description in descriptions.items():
            try:
                client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template,
                                                       description=description))
            except ObjectAlreadyExists:
                pass
    return list(descriptions)
