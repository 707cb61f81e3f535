"""Starting or joining Ray, the same way for every job (`ray.*` keys: pipelines.config.RayConfig)."""
from __future__ import annotations

from typing import Optional

from pipelines.config import RayConfig


def init_ray(cfg: RayConfig, num_cpus: Optional[int] = None, env_vars: Optional[dict[str, str]] = None):
    """Join the cluster at `ray.address`, or start a local Ray (dashboard off unless configured,
    and then bound to `ray.dashboard_host`, 127.0.0.1 by default). Returns the `ray` module."""
    import ray

    if ray.is_initialized():
        return ray
    runtime_env = {"env_vars": env_vars} if env_vars else None
    if cfg.address:
        ray.init(address=cfg.address, runtime_env=runtime_env, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=cfg.dashboard, dashboard_host=cfg.dashboard_host,
                 runtime_env=runtime_env, log_to_driver=True)
    return ray
