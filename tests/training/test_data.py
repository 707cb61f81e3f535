"""The training loader on real shards: remote URLs, explicit rank splitting, augmentation, resume."""

from __future__ import annotations

import fsspec
import numpy as np
import pytest
import torch

from craftsman_platform.shapedata.cameras import canonical_c2w
from craftsman_platform.shapedata.sample import expand_urls
from craftsman_platform.training.config import DataConfig
from craftsman_platform.training.data import BatchIterator, ShardStream, StreamState

SMALL = dict(
    batch_size=2,
    num_workers=0,
    shuffle_buffer=4,
    epoch_samples=8,
    num_surface=256,
    num_vol=64,
    num_near=64,
    image_size=64,
    views=4,
)


def take(stream: ShardStream, n: int) -> list[dict]:
    it = BatchIterator(stream)
    return [next(it) for _ in range(n)]


def test_diffusion_batches_from_memory_urls_through_fsspec(tiny_shards):
    fs = fsspec.filesystem("memory")
    urls = []
    for path in expand_urls(str(tiny_shards / "shards" / "*.tar")):
        url = f"memory://bucket/{path.rsplit('/', 1)[-1]}"
        with fs.open(url, "wb") as f:
            f.write(open(path, "rb").read())
        urls.append(url)
    batch = take(ShardStream(urls, DataConfig(**SMALL), "diffusion"), 1)[0]
    assert batch["surface"].shape == (2, 256, 6) and batch["vol"].shape == (2, 64, 4)
    assert batch["images"].shape == (2, 4, 3, 64, 64) and batch["images"].dtype == torch.uint8
    assert batch["c2w"].shape == (2, 4, 4, 4) and isinstance(batch["seed"], int)


def test_without_resampling_ranks_read_disjoint_shards(tiny_shards):
    urls = expand_urls(str(tiny_shards / "shards" / "*.tar"))
    cfg = DataConfig(**{**SMALL, "resampled": False, "epoch_samples": 100, "batch_size": 1})
    seen = [{u for b in take(ShardStream(urls, cfg, "vae", rank=r, world_size=2), 4) for u in b["uid"]} for r in (0, 1)]
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 8
    with pytest.raises(ValueError, match="resampled"):
        ShardStream(urls, DataConfig(**{**SMALL, "resampled": False}), "vae", rank=0, world_size=8)


def test_rotation_turns_points_and_cameras_together(tiny_shards):
    """After augmentation, surface points still project onto the object in the (unchanged) views."""
    urls = expand_urls(str(tiny_shards / "shards" / "*.tar"))
    batch = take(
        ShardStream(urls, DataConfig(**{**SMALL, "rotation_augment": True, "view_set": "canonical"}), "diffusion"), 1
    )[0]
    xyz, c2w, img = batch["surface"][0, :, :3].numpy(), batch["c2w"][0, 0].numpy(), batch["images"][0, 0].numpy()
    assert not np.allclose(c2w, canonical_c2w()[0], atol=1e-3)  # the front camera has moved
    f = 0.5 * 64 / np.tan(np.radians(40) / 2)  # render.fov_deg 40, resized to 64 px
    cam = (xyz - c2w[:3, 3]) @ c2w[:3, :3]
    col = np.round(f * cam[:, 0] / cam[:, 2] + 31.5).astype(int)
    row = np.round(f * cam[:, 1] / cam[:, 2] + 31.5).astype(int)
    ok = (col >= 0) & (col < 64) & (row >= 0) & (row < 64)
    assert ok.mean() > 0.99
    on_object = (img[:, row[ok], col[ok]] < 250).any(axis=0)  # not the white background
    assert on_object.mean() > 0.9


def test_stream_state_resumes_exactly(tiny_shards):
    urls = expand_urls(str(tiny_shards / "shards" / "*.tar"))
    cfg = DataConfig(**{**SMALL, "num_workers": 2, "epoch_samples": 12})  # 2 workers x 3 batches per epoch
    full = take(ShardStream(urls, cfg, "vae"), 9)
    rest = take(ShardStream(urls, cfg, "vae", state=StreamState(epoch=0, batches_done=3)), 6)  # crosses the epoch
    for a, b in zip(full[3:], rest):
        assert a["uid"] == b["uid"] and torch.equal(a["surface"], b["surface"]) and a["seed"] == b["seed"]


@pytest.mark.parametrize("resampled", [True, False])
def test_shards_that_are_all_unreadable_stop_with_a_clear_error(tmp_path, resampled):
    for i in range(2):
        (tmp_path / f"bad-{i}.tar").write_bytes(b"not a tar file" * 100)
    stream = ShardStream(
        expand_urls(str(tmp_path / "bad-*.tar")), DataConfig(**{**SMALL, "resampled": resampled}), "vae"
    )
    with pytest.raises(RuntimeError, match="unreadable"):
        take(stream, 1)


def test_text_batches_draw_one_of_each_objects_captions_and_read_no_views(tiny_shards):
    from craftsman_platform.training.decode import member_filter, pick_caption

    cfg = DataConfig(**{**SMALL, "condition": "text", "epoch_samples": 8, "batch_size": 4})
    urls = expand_urls(str(tiny_shards / "shards" / "*.tar"))
    seen: dict[str, set] = {}
    for epoch in range(4):
        for batch in take(ShardStream(urls, cfg, "diffusion", state=StreamState(epoch, 0)), 2):
            assert "images" not in batch and batch["surface"].shape == (4, 256, 6)
            for uid, caption in zip(batch["uid"], batch["caption"]):
                seen.setdefault(uid, set()).add(caption)
    assert len(seen) == 8 and all(seen.values())
    assert any(len(c) == 2 for c in seen.values())  # several captions: another one drawn on another read
    assert not member_filter("diffusion", text=True)("x.rgb_000.png")  # views are not read
    assert member_filter("latents", text=True)("x.captions.json")
    assert pick_caption([], np.random.default_rng(0)) == ""  # no caption: the empty (unconditional) prompt
