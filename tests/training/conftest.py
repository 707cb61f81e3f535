"""The reference curve the distributed tests compare against."""

from __future__ import annotations

import pytest
from helpers import CURVE_STEPS, TWO_RANK_ARGS, craft_train, losses
from helpers import shard_glob as shards


@pytest.fixture(scope="session")
def one_rank_curve(tiny_shards, tmp_path_factory) -> dict[int, float]:
    """The tiny VAE's losses over CURVE_STEPS steps in one process with grad_accum=2."""
    run = tmp_path_factory.mktemp("one-rank") / "run"
    craft_train(
        *TWO_RANK_ARGS,
        f"data.train_shards={shards(tiny_shards)}",
        f"run_dir={run}",
        f"trainer.max_steps={CURVE_STEPS}",
        "trainer.grad_accum=2",
    )
    return losses(run)
