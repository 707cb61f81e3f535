"""Sources: folders, list files with fsspec URLs, and Objaverse through the objaverse package's cache."""

from __future__ import annotations

import gzip
import json
import shutil
import urllib.request
from pathlib import Path

import fsspec
import pytest
import trimesh
import webdataset as wds
from helpers import manifest_rows, serve

from craftsman_platform.geometry.config import SampleConfig
from craftsman_platform.pipelines.preprocess.config import OBJAVERSE_URL, PreprocessConfig, SourceConfig
from craftsman_platform.pipelines.preprocess.job import parse_partition, preprocess
from craftsman_platform.pipelines.preprocess.sources import ObjectRef, list_source
from craftsman_platform.pipelines.preprocess.sources.fetch import local_copy
from craftsman_platform.shapedata.sample import sanitize_uid

UIDS = {"duck": "0123456789abcdef0123456789abcdef", "robot_a": "a" * 32, "robot_b": "b" * 32}


def test_uids_are_sanitised_and_distinct():
    for hostile in ["../../etc/passwd", "a.b.c", "dir/x y.z", "..", "\x00evil"]:
        uid = sanitize_uid(hostile)
        assert set(uid) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") and "." not in uid
    assert sanitize_uid("a.b/c") != sanitize_uid("a_b/c")
    assert sanitize_uid("dir/chair.obj") != sanitize_uid("dir/chair.stl")
    assert sanitize_uid("dir/chair.obj").startswith("dir_chair-")


def listed(src: SourceConfig) -> list[ObjectRef]:
    """What a source lists, as the task slots get it."""
    return [ObjectRef.from_row(r) for batch in list_source(src).batches for r in batch.to_pylist()]


def objaverse_objects(uids, categories, cache, annotations=True) -> list[ObjectRef]:
    src = SourceConfig(kind="objaverse", uids=list(uids or []), lvis_categories=list(categories or []))
    src.cache_dir, src.annotations = cache, annotations
    return listed(src)


def test_folder_and_list_file_sources(tmp_path, pybullet_dir):
    (tmp_path / "m" / "sub").mkdir(parents=True)
    shutil.copy(pybullet_dir / "duck.obj", tmp_path / "m" / "sub" / "duck.obj")
    shutil.copy(pybullet_dir / "cube.obj", tmp_path / "m" / "sub" / "duck.stl.obj")
    (tmp_path / "m" / "notes.txt").write_text("not a mesh")
    refs = listed(SourceConfig(kind="folder", path=str(tmp_path / "m")))
    assert [r.source for r in refs] == [
        str((tmp_path / "m/sub/duck.obj").resolve()),
        str((tmp_path / "m/sub/duck.stl.obj").resolve()),
    ]
    assert len({r.uid for r in refs}) == 2
    listing = tmp_path / "list.txt"
    listing.write_text("# objects\nm/sub/duck.obj\ns3://bucket/chair.glb  # remote\n\nfile:///data/x.stl\n")
    refs = listed(SourceConfig(kind="list", path=str(listing)))
    assert [r.source for r in refs] == [str(tmp_path / "m/sub/duck.obj"), "s3://bucket/chair.glb", "file:///data/x.stl"]
    assert len({r.uid for r in refs}) == 3


def test_remote_urls_are_fetched_through_fsspec(pybullet_dir):
    data = (pybullet_dir / "duck.obj").read_bytes()
    with fsspec.open("memory://bucket/objects/duck.obj", "wb") as fh:  # a real fsspec filesystem
        fh.write(data)
    with local_copy("memory://bucket/objects/duck.obj") as path:
        assert path.suffix == ".obj" and path.read_bytes() == data
    assert not path.exists()  # the temporary copy is removed
    with pytest.raises(FileNotFoundError):
        with local_copy("memory://bucket/objects/missing.obj"):
            pass


def make_objaverse_cache(root: Path, pybullet_dir: Path) -> Path:
    """A cache laid out exactly as objaverse 0.1.7 lays it out, holding real meshes as GLB."""
    base = root / "hf-objaverse-v1"
    sources = {"duck": "duck.obj", "robot_a": "random_urdfs/000/000.obj", "robot_b": "random_urdfs/001/001.obj"}
    paths, meta = {}, {}
    for name, rel in sources.items():
        uid = UIDS[name]
        paths[uid] = f"glbs/000-000/{uid}.glb"
        target = base / paths[uid]
        target.parent.mkdir(parents=True, exist_ok=True)
        trimesh.load(pybullet_dir / rel, force="scene").export(target)
        meta[uid] = {
            "uid": uid,
            "name": name,
            "license": "by",
            "tags": [{"name": "test"}],
            "categories": [],
            "faceCount": 1,
        }
    for name, payload in {
        "object-paths.json.gz": paths,
        "metadata/000-000.json.gz": meta,
        "lvis-annotations.json.gz": {"duck": [UIDS["duck"]], "robot": [UIDS["robot_a"], UIDS["robot_b"]]},
    }.items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(base / name, "wt") as fh:
            json.dump(payload, fh)
    return root


@pytest.fixture()
def offline(monkeypatch):
    """Any download attempt by the objaverse package fails the test."""

    def refuse(url, *args, **kwargs):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(urllib.request, "urlretrieve", refuse)


def test_objaverse_from_cache_by_category_and_uid(tmp_path, pybullet_dir, offline):
    cache = make_objaverse_cache(tmp_path / "cache", pybullet_dir)
    refs = objaverse_objects(None, ["robot"], str(cache))
    assert [r.uid for r in refs] == [UIDS["robot_a"], UIDS["robot_b"]]
    assert refs[0].annotations["name"] == "robot_a" and refs[0].annotations["tags"] == ["test"]
    # resolved to download URLs, nothing fetched; the node-local cache path goes along
    assert refs[0].source == f"{OBJAVERSE_URL}/glbs/000-000/{UIDS['robot_a']}.glb"
    assert Path(refs[0].cached).is_file()
    refs = objaverse_objects([UIDS["duck"], "f" * 32], None, str(cache), annotations=False)
    assert [r.uid for r in refs] == [UIDS["duck"]] and refs[0].annotations == {}  # unknown uid skipped
    with pytest.raises(ValueError, match="not Objaverse uids"):
        objaverse_objects(["../../etc/passwd"], None, str(cache))
    with pytest.raises(ValueError, match="unknown LVIS"):
        objaverse_objects(None, ["spaceship"], str(cache))


def test_preprocess_objaverse_fetches_on_the_workers(tmp_path, pybullet_dir, offline):
    """The driver reads only the index files; each task fetches its own GLB over HTTP, except where
    the cache already holds it."""
    cache = make_objaverse_cache(tmp_path / "cache", pybullet_dir)
    remote = tmp_path / "remote"
    shutil.copytree(cache / "hf-objaverse-v1" / "glbs", remote / "glbs")
    for name in ("robot_a", "robot_b"):  # only the duck's GLB stays in the cache
        (cache / "hf-objaverse-v1" / f"glbs/000-000/{UIDS[name]}.glb").unlink()
    cfg = PreprocessConfig(output_dir=str(tmp_path / "out"))
    cfg.source.kind, cfg.source.cache_dir, cfg.source.lvis_categories = "objaverse", str(cache), ["robot", "duck"]
    cfg.geometry.watertight.resolution, cfg.geometry.watertight.quality_samples = 96, 5000
    cfg.geometry.sample = SampleConfig(surface=2000, sharp_max=200, volume=2000, near=500)
    cfg.render.resolution, cfg.render.extra_sets = 48, 0
    with serve(remote) as (url, requested):
        cfg.source.base_url = url
        summary = preprocess(cfg)
    assert summary["ok"] == 3
    assert sorted(requested) == sorted(f"/glbs/000-000/{UIDS[n]}.glb" for n in ("robot_a", "robot_b"))
    assert not list((cache / "hf-objaverse-v1" / "glbs/000-000").glob("a*"))  # fetched copies are not kept
    rows = {r["uid"]: r for r in manifest_rows(tmp_path / "out")}
    assert sorted(rows) == sorted(UIDS.values()) and rows[UIDS["robot_a"]]["source"].startswith(url)
    assert {u: r["lvis_category"] for u, r in rows.items()} == {
        UIDS["duck"]: "duck",
        UIDS["robot_a"]: "robot",
        UIDS["robot_b"]: "robot",
    }  # a manifest column `craft pack select=` can use
    samples = list(
        wds.WebDataset(sorted(str(p) for p in (tmp_path / "out" / "shards").glob("*.tar")), shardshuffle=False).decode()
    )
    names = {s["__key__"]: s["meta.json"]["annotations"]["name"] for s in samples}
    assert names == {uid: name for name, uid in UIDS.items()}
    assert all(len(s["cameras.json"]["views"]) == 4 for s in samples)


def test_partitions_are_disjoint_and_cover_everything(tmp_path, pybullet_dir):
    from craftsman_platform.pipelines.preprocess.listing import make_plan

    def uids(partition):
        with make_plan(list_source(SourceConfig(path=str(pybullet_dir / "random_urdfs"))), iter([]), False,
                       partition, None, 1) as plan:  # fmt: skip
            return {r.uid for run in plan.groups() for r in run}

    everything = uids(None)
    parts = [uids((i, 3)) for i in range(3)]
    assert set().union(*parts) == everything and sum(map(len, parts)) == len(everything) > 900
    assert all(len(p) > 250 for p in parts)
    with pytest.raises(ValueError, match="partition"):
        parse_partition("3/3")
