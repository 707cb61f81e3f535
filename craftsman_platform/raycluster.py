"""Starting or joining Ray, the same way for every job (`ray.*` keys: craftsman_platform.config.RayConfig).

A local Ray listens on 127.0.0.1 only. Ray turns a loopback node address into the machine's
external one (`ray._private.services.resolve_ip_for_localhost`), after which its servers (GCS,
raylet, agents, workers) listen on every interface; for a local Ray the node address is pinned to
127.0.0.1 instead. With `ray.address` set (a cluster), Ray's own addressing applies.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Optional

LOOPBACK = "127.0.0.1"


@dataclass
class RayConfig:
    address: Optional[str] = None  # None: start a local Ray; "auto" or "ray://host:10001": a cluster
    dashboard: bool = False
    dashboard_host: str = "127.0.0.1"  # never exposed beyond this machine unless configured


@contextlib.contextmanager
def _loopback_node_address():
    import ray._private.services as services

    original = services.get_node_ip_address
    services.get_node_ip_address = lambda address=None: LOOPBACK
    try:
        yield
    finally:
        services.get_node_ip_address = original


def init_ray(
    cfg: RayConfig,
    num_cpus: Optional[int] = None,
    env_vars: Optional[dict[str, str]] = None,
    system_config: Optional[dict] = None,
    worker_setup=None,
):
    """Join the cluster at `ray.address`, or start a local Ray on 127.0.0.1 (dashboard off unless
    configured, and then bound to `ray.dashboard_host`; `system_config` applies to a local Ray
    only, a cluster has its own). `worker_setup` runs in every worker process of the job (Ray's
    `worker_process_setup_hook`). Returns the `ray` module."""
    import ray

    if ray.is_initialized():
        return ray
    verbose = os.environ.get("CRAFT_VERBOSE") == "1"
    runtime_env = {"env_vars": env_vars} if env_vars else {}
    if worker_setup is not None:
        runtime_env["worker_process_setup_hook"] = worker_setup
    runtime_env = runtime_env or None
    quiet = {} if verbose else {"logging_level": logging.WARNING}
    if not verbose:  # the notice that token authentication is on (it stays on) is not news for a user
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if cfg.address:
        ray.init(address=cfg.address, runtime_env=runtime_env, log_to_driver=True, **quiet)
        return ray
    with _loopback_node_address():
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=cfg.dashboard,
            dashboard_host=cfg.dashboard_host,
            runtime_env=runtime_env,
            log_to_driver=True,
            _node_ip_address=LOOPBACK,
            _system_config=system_config,
            **quiet,
        )
    return ray
