"""What every model replica holds: a small Ray actor the replicas report to.

A call through a ``DeploymentHandle`` reaches one replica, so asking the model
deployments for their ``info`` shows only the replicas that happened to answer.
Ray Serve's controller knows each replica's multiplexed model ids (it routes by
them) but has no public API that returns them. So every ``ModelServer`` replica
reports what it holds to one named actor per Ray cluster, ``ReplicaDirectory``:
after every bundle it loads, every ``REPORT_INTERVAL_S`` (a heartbeat: a replica
that died without saying goodbye drops out after ``STALE_AFTER_S``), and when it
shuts down. ``GET /models`` and ``/ready`` read it through the ensemble.

The actor asks for no CPU and does nothing between reports: at 4 model
deployments of one replica each, 8 small calls a minute. It is detached, so a
restarting replica finds it again, and placed on the head node (it must not keep
an autoscaled worker alive). Its name carries ``FORMAT``: a new release whose
directory speaks another format starts its own instead of calling an old one.
Entries are keyed by Serve application, deployment and replica, so applications
on one cluster never see each other's. ``ray kill`` of the actor (``ray list
actors --filter name=hdx-replica-directory-v1``) loses nothing that matters: the
replicas' next reports fill a new one.
"""

from __future__ import annotations

import asyncio
import logging
import time

import ray
from ray import serve

log = logging.getLogger(__name__)

FORMAT = 1
DIRECTORY_NAME = f"hdx-replica-directory-v{FORMAT}"
NAMESPACE = "hdx"
READ_TIMEOUT_S = 2.0  # /ready must not wait on this: a slow directory means "replicas unknown"
REPORT_INTERVAL_S = 30.0
STALE_AFTER_S = 3 * REPORT_INTERVAL_S + 5.0


@ray.remote(num_cpus=0, max_restarts=-1)
class ReplicaDirectory:
    """``(app, deployment, replica) -> what the replica said it holds, and when``."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str, str], dict] = {}

    def report(self, app: str, deployment: str, replica: str, entry: dict) -> None:
        self._entries[(app, deployment, replica)] = {**entry, "reported_at": time.time()}

    def forget(self, app: str, deployment: str, replica: str) -> None:
        self._entries.pop((app, deployment, replica), None)

    def held(self, app: str, max_age_s: float = STALE_AFTER_S) -> dict[str, list[dict]]:
        """``app``'s live replicas by deployment, sorted by replica id; older reports are dropped."""
        now = time.time()
        for key in [k for k, e in self._entries.items() if now - e["reported_at"] > max_age_s]:
            del self._entries[key]
        out: dict[str, list[dict]] = {}
        for (a, deployment, replica), entry in sorted(self._entries.items()):
            if a == app:
                out.setdefault(deployment, []).append({"replica": replica, **entry})
        return out


_handle = None


def replica_directory():
    """The cluster's directory actor, started on the head node by whoever asks first; the
    handle is kept per process (a lookup asks the GCS)."""
    global _handle
    if _handle is None:
        _handle = ReplicaDirectory.options(
            name=DIRECTORY_NAME,
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            resources={"node:__internal_head__": 0.001},
        ).remote()
    return _handle


def forget_handle() -> None:
    """Look the actor up again next time (after a failed call: it may have been restarted)."""
    global _handle
    _handle = None


def this_replica() -> tuple[str, str, str]:
    """The directory key of the calling Serve replica: application, deployment, replica id."""
    context = serve.get_replica_context()
    return context.app_name, context.deployment, context.replica_id.unique_id


async def held_by_family(timeout_s: float = READ_TIMEOUT_S) -> dict[str, list[dict]] | None:
    """What every live replica of the calling replica's application reported, by the
    ``ml_model`` (family) it serves; None outside Serve or when the directory cannot be read
    within ``timeout_s``."""
    try:
        app = serve.get_replica_context().app_name
    except Exception:  # not in a Serve replica
        return None
    try:
        directory = await asyncio.to_thread(replica_directory)  # a first lookup blocks: not on the loop
        by_deployment = await asyncio.wait_for(directory.held.remote(app), timeout_s)
    except Exception as exc:
        forget_handle()
        log.warning("reading the replica directory failed: %s", exc)
        return None
    out: dict[str, list[dict]] = {}
    for entries in by_deployment.values():
        for entry in entries:
            out.setdefault(entry.get("ml_model"), []).append(entry)
    return out
