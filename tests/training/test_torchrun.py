"""torchrun on this machine as two nodes (a node rank each, one process each, static rendezvous on
127.0.0.1): the one-process curve, through a SIGTERM to one node's torchrun and a resume."""

from __future__ import annotations

import os
import signal
import sys

import pytest
from helpers import CURVE_STEPS, TWO_RANK_ARGS, assert_follows, free_ports, losses, train_in_background, wait_for_rows
from helpers import shard_glob as shards

from craftsman_platform.models.checkpoints import latest_checkpoint, read_meta


def torchrun_nodes(args: list[str]) -> list:
    """`torchrun --nnodes=2` started twice, node ranks 0 and 1, each running `craft train ARGS`."""
    port = free_ports(1)[0]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1"]
    where = ["--master-addr=127.0.0.1", f"--master-port={port}", "--shutdown-timeout=60"]
    return [
        train_in_background(
            command=[*launch, f"--node-rank={node}", *where, "-m", "craftsman_platform.cli", "train", *args]
        )
        for node in (0, 1)
    ]


@pytest.mark.slow
def test_two_torchrun_nodes_follow_the_curve_through_a_sigterm(one_rank_curve, tiny_shards, tmp_path):
    run = tmp_path / "run"
    args = [
        *TWO_RANK_ARGS,
        f"data.train_shards={shards(tiny_shards)}",
        f"run_dir={run}",
        f"trainer.max_steps={CURVE_STEPS}",
        "trainer.ckpt_every=100",
        "launcher=torchrun",  # with TWO_RANK_ARGS' loader workers, which torchrun's signal reaches too
    ]
    nodes = torchrun_nodes(args)
    wait_for_rows(nodes[0], run, 4)
    os.kill(nodes[0].pid, signal.SIGTERM)  # what a scheduler sends the launcher; torchrun forwards it
    outs = [node.communicate(timeout=300)[0] for node in nodes]
    step = read_meta(latest_checkpoint(run))["step"]
    assert 4 <= step < CURVE_STEPS, outs[0][-3000:]
    assert f"preempted at step {step}" in outs[0] and "exited unexpectedly" not in outs[0] + outs[1], outs
    # node 1's ranks stopped by agreement and its torchrun ends 0; the signalled torchrun re-raises
    # the signal after its rank exited 0 (torch's elastic agent): exit 1, as docs/training.md says
    assert nodes[1].returncode == 0 and nodes[0].returncode == 1, [n.returncode for n in nodes]
    resumed = torchrun_nodes(args)
    outs = [node.communicate(timeout=300)[0] for node in resumed]
    assert [node.returncode for node in resumed] == [0, 0], outs[0][-3000:]
    assert f"at step {step}" in outs[0] and "resumed from" in outs[0]
    assert_follows(losses(run), one_rank_curve, CURVE_STEPS)
