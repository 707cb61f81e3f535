"""The shard sample contract in code: what the writer encodes, plain webdataset reads back with the
documented names and dtypes; the canonical cameras of generation are the shards' views 0-3."""

from __future__ import annotations

import glob
import io

import numpy as np
import pytest
import webdataset as wds

from craftsman_platform.shapedata.cameras import canonical_c2w, intrinsics, view_cameras
from craftsman_platform.shapedata.sample import (
    CAMERAS,
    DEPTH_SCALE,
    SURFACE,
    VOL,
    View,
    depth_member,
    encode_sample,
    normal_member,
    read_cameras,
    read_npy,
    view_member,
)


def _views(n: int) -> list[View]:
    rng = np.random.default_rng(0)
    cams = view_cameras(0, 4.5, rng)[:n]
    return [
        View(
            rgba=rng.integers(0, 256, (8, 8, 4), dtype=np.uint8),
            normal=rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
            depth=rng.integers(0, 65536, (8, 8), dtype=np.uint16),
            c2w=c2w,
            K=intrinsics(8, 8),
        )
        for c2w in cams
    ]


def test_encoded_sample_reads_back_with_plain_webdataset(tmp_path):
    arrays = {"surface": np.ones((5, 6), np.float16), "vol": np.full((7, 4), -0.5, np.float16)}
    views = _views(2)
    members = encode_sample(arrays, views)
    assert {SURFACE, VOL, CAMERAS, view_member(1), normal_member(1), depth_member(1)} <= set(members)
    with wds.TarWriter(str(tmp_path / "s.tar")) as sink:
        sink.write({"__key__": "obj", **members})
    (sample,) = wds.WebDataset(str(tmp_path / "s.tar"), shardshuffle=False).decode("rgba8")
    assert sample[SURFACE].dtype == np.float16 and sample[VOL].shape == (7, 4)
    assert sample[view_member(0)].shape == (8, 8, 4)  # RGBA kept
    assert sample[CAMERAS]["convention"] == "opencv" and sample[CAMERAS]["depth_scale"] == DEPTH_SCALE
    raw = next(iter(wds.WebDataset(str(tmp_path / "s.tar"), shardshuffle=False)))
    np.testing.assert_array_equal(read_npy(raw[SURFACE]), arrays["surface"])
    np.testing.assert_allclose(read_cameras(raw)[1]["c2w"], views[1].c2w)


def test_writer_refuses_unknown_or_full_precision_arrays():
    with pytest.raises(ValueError, match="not sample arrays"):
        encode_sample({"points": np.zeros((2, 3), np.float16)}, [])
    with pytest.raises(ValueError, match="float16 already.*vol"):
        encode_sample({"vol": np.zeros((2, 4), np.float32)}, [])


def test_pickled_arrays_are_refused():
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        read_npy(buf.getvalue())


def test_generation_cameras_are_the_shards_canonical_views(tiny_shards):
    raw = next(iter(wds.WebDataset(sorted(glob.glob(str(tiny_shards / "shards" / "*.tar"))), shardshuffle=False)))
    stored = np.array([c["c2w"] for c in read_cameras(raw)[:4]], dtype=np.float32)
    np.testing.assert_allclose(canonical_c2w(), stored, atol=1e-6)
