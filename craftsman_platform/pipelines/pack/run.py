"""Running the pack tasks on Ray: one per archive shard, as many at once as the cluster has slots,
encoder actors on its GPUs (latents); the driver journals each chunk shard a task returns."""

from __future__ import annotations

import logging
import time
from collections import deque

from tqdm import tqdm

from craftsman_platform.pipelines.lock import OutputLock
from craftsman_platform.pipelines.pack.config import PackConfig
from craftsman_platform.pipelines.pack.part import pack_part
from craftsman_platform.pipelines.pack.recipes import Encoder
from craftsman_platform.pipelines.shardstore import ShardStore
from craftsman_platform.pipelines.slots import Slots
from craftsman_platform.pipelines.tasks import finished, overdue
from craftsman_platform.raycluster import init_ray

log = logging.getLogger("craft.pack")


def encoder_actors(ray, cfg: PackConfig) -> list:
    """The latents pack's encoder actors: `encode.actors`, or one per GPU of the cluster (none without)."""
    if cfg.kind != "latents":
        return []
    gpus = float(ray.cluster_resources().get("GPU", 0))
    count = cfg.encode.actors if cfg.encode.actors is not None else int(gpus // cfg.encode.gpus_per_actor)
    if count == 0:
        log.info("encoding on the CPU inside each pack task (no GPU in the cluster)")
        return []
    # CPU actors reserve no CPU: the pack tasks that feed them wait on them while holding theirs
    options = {"num_gpus": cfg.encode.gpus_per_actor, "num_cpus": 1} if gpus else {"num_cpus": 0}
    log.info("%d encoder actors (%s)", count, f"{cfg.encode.gpus_per_actor} GPU each" if gpus else "CPU")
    actor = ray.remote(Encoder).options(**options)
    return [actor.remote(cfg.vae_checkpoint, cfg.encode.device) for _ in range(count)]


def run_parts(
    todo: list[tuple], cfg: PackConfig, recipe: dict, store: ShardStore, lock: OutputLock
) -> tuple[dict, dict, float]:
    """Pack every (part, archive url, chunks, uids); returns ({part: task result}, {archive shard: error},
    seconds Ray took to start)."""
    t0 = time.monotonic()
    ray = init_ray(cfg.ray, num_cpus=cfg.workers)
    startup = time.monotonic() - t0
    task = ray.remote(pack_part).options(num_cpus=1, memory=int(cfg.memory_per_task_gb * 2**30), max_retries=1)
    encoders = encoder_actors(ray, cfg)
    slots = Slots(ray, cfg)
    cfg_ref, recipe_ref = ray.put(cfg), ray.put(recipe)
    queue, pending = deque(todo), {}
    results, errors = {}, {}
    bar = tqdm(total=sum(len(t[3]) for t in todo), desc="objects", unit="obj", smoothing=0.1)
    try:
        while queue or pending:
            lock.check()
            slots.refresh(len(queue) + len(pending))
            while queue and len(pending) < slots.target:
                part, url, chunks, uids = item = queue.popleft()
                encoder = encoders[part % len(encoders)] if encoders else None
                ref = task.remote(part, url, chunks, uids, cfg_ref, recipe_ref, encoder)
                pending[ref] = (item, time.monotonic())
            for ref, res in finished(ray, pending, wait_s=0.5):
                (part, url, chunks, uids), _ = pending.pop(ref)
                if isinstance(res, Exception):  # the task died or raised: the shard is packed on the next run
                    errors[url.rsplit("/", 1)[-1]] = f"{type(res).__name__}: {str(res).splitlines()[0][:300]}"
                    bar.update(len(uids))
                    continue
                for sealed in res["sealed"]:
                    store.commit({"shard": sealed["shard"], "bytes": sealed["bytes"]}, sealed["rows"])
                for row in res["failed"]:
                    store.add_failed(row)
                results[part] = res
                bar.update(len(uids))
            for ref in overdue(pending, cfg.timeout_s):
                (part, url, chunks, uids), _ = pending.pop(ref)
                ray.cancel(ref, force=True)
                errors[url.rsplit("/", 1)[-1]] = f"no result after {cfg.timeout_s:.0f} s (timeout_s)"
                bar.update(len(uids))
            bar.set_postfix({"parts": len(results), "running": len(pending), "errors": len(errors)}, refresh=False)
    finally:
        bar.close()
        store.flush_failed()
        slots.release()
        ray.shutdown()
    return results, errors, startup
