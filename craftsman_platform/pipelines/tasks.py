"""Following a pipeline's running work: `pending` maps each run's result reference to a tuple
whose first two items are its work item and the time it started, in submission order (pack's
tasks, preprocess's actor calls)."""

from __future__ import annotations

import time

# After the first result, how long the driver gathers more before it handles them: a few ms of a
# slot's time, and at most ~100 rounds a second over every running task (ray.wait costs ~0.2 ms per
# 1,000 tasks), however many finish.
GATHER_S = 0.01


def finished(ray, pending, wait_s: float) -> list[tuple]:
    """(ref, result or the exception it raised) of the refs in `pending` that have finished: waits until
    one has (`wait_s` at most), then GATHER_S for others. Waiting for all of them (as the schedulers
    did) kept each finished task's slot idle until the slowest one or `wait_s` was over."""
    if not pending:
        return []
    ready, rest = ray.wait(list(pending), num_returns=1, timeout=wait_s)
    if ready and rest:
        ready += ray.wait(rest, num_returns=len(rest), timeout=GATHER_S)[0]
    try:
        return list(zip(ready, ray.get(ready)))  # one call for all (most results are small, inline)
    except Exception:  # one of them failed: take them one by one
        out = []
        for ref in ready:
            try:
                out.append((ref, ray.get(ref)))
            except Exception as err:
                out.append((ref, err))
        return out


def overdue(pending: dict, timeout_s: float) -> list:
    """Refs of the tasks running for longer than `timeout_s`; the look stops at the first task still
    within its time (the rest were submitted later)."""
    now, late = time.monotonic(), []
    for ref, item in pending.items():
        if now - item[1] <= timeout_s:
            break
        late.append(ref)
    return late
