"""The driver's listing without Ray: Objaverse-XL annotations in the objaverse package's own cache
layout and schema, filters, an unreachable hub, deduplication by content against what the output
holds, and the manifest's parts (recovery of uncovered journals, an earlier version's layout)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import ENV, manifest_rows
from xl_data import github_id, sha256, write_annotations

from craftsman_platform.errors import ConfigError, MissingInput
from craftsman_platform.pipelines.manifest import ManifestParts
from craftsman_platform.pipelines.preprocess.config import SourceConfig
from craftsman_platform.pipelines.preprocess.listing import make_plan
from craftsman_platform.pipelines.preprocess.sources import Listed, ObjectRef, list_source, listing_batch
from craftsman_platform.pipelines.shardstore import ShardStore
from craftsman_platform.pipelines.storage import Output
from craftsman_platform.shapedata.manifest import read_manifest

SKETCHFAB_UID = "a" * 32
COMMIT = "c" * 40


@pytest.fixture()
def xl_cache(tmp_path):
    cache = tmp_path / "cache"
    write_annotations(cache, "sketchfab", [
        {"fileIdentifier": f"https://sketchfab.com/3d-models/{SKETCHFAB_UID}", "data": b"duck"},
        {"fileIdentifier": f"https://sketchfab.com/3d-models/{'b' * 32}", "data": b"unknown to object paths"},
    ])  # fmt: skip
    write_annotations(cache, "smithsonian", [{"fileIdentifier": "https://3d-api.si.edu/x/duck.glb", "data": b"duck"}])
    write_annotations(cache, "thingiverse", [
        {"fileIdentifier": "https://www.thingiverse.com/thing:12/files?fileId=345", "fileType": "stl", "data": b"c"},
        {"fileIdentifier": "https://www.thingiverse.com/thing:12/files?fileId=346", "fileType": "usdz", "data": b"u"},
        {"fileIdentifier": "https://www.thingiverse.com/thing:13/files?fileId=347", "fileType": "STL", "data": b"p",
         "license": "proprietary"},
    ])  # fmt: skip
    github = [
        {"fileIdentifier": github_id("org", "models", COMMIT, "a/duck.glb"), "data": b"duck", "license": "MIT"},
        {"fileIdentifier": github_id("org", "models", COMMIT, "b.obj"), "data": b"b", "fileType": "obj",
         "metadata": json.dumps({"github_organization": "org"})},
        {"fileIdentifier": "https://github.com/../x/blob/abc/y.obj", "data": b"bad", "fileType": "obj"},
    ]  # fmt: skip
    write_annotations(cache, "github", github)
    write_annotations(cache, "github", github[1:2], name="alignment.parquet")
    write_annotations(cache, "sketchfab", [], name="alignment.parquet")
    paths = {SKETCHFAB_UID: f"glbs/000-001/{SKETCHFAB_UID}.glb"}
    (cache / "hf-objaverse-v1").mkdir(parents=True)
    with gzip.open(cache / "hf-objaverse-v1" / "object-paths.json.gz", "wt") as fh:
        json.dump(paths, fh)
    return cache


def listed(src: SourceConfig) -> list[dict]:
    return [r for b in list_source(src).batches for r in b.to_pylist()]


def test_objaverse_xl_listing_reads_the_packages_cache_with_its_filters(xl_cache):
    import objaverse.xl as oxl

    # the package itself reads this cache (offline): the layout is its own
    package = oxl.get_annotations(download_dir=str(xl_cache))
    assert len(package) == 9 and set(package["source"]) == {"sketchfab", "smithsonian", "thingiverse", "github"}

    src = SourceConfig(kind="objaverse_xl", cache_dir=str(xl_cache), base_url="http://mirror/objaverse")
    rows = {r["source"]: r for r in listed(src)}
    assert len(rows) == 6  # usdz (file_types), an unknown Sketchfab uid and a malformed identifier are left out
    sketchfab = rows[f"https://sketchfab.com/3d-models/{SKETCHFAB_UID}"]
    assert (
        sketchfab["uid"] == SKETCHFAB_UID
        and sketchfab["url"] == f"http://mirror/objaverse/glbs/000-001/{SKETCHFAB_UID}.glb"
    )
    assert sketchfab["cached"].endswith(f"hf-objaverse-v1/glbs/000-001/{SKETCHFAB_UID}.glb")
    thing = rows["https://www.thingiverse.com/thing:12/files?fileId=345"]
    assert thing["url"] == "https://www.thingiverse.com/download:345" and thing["file_type"] == "stl"
    assert thing["uid"].startswith("thingiverse-") and thing["listed_sha256"] == sha256(b"c")
    duck = rows[github_id("org", "models", COMMIT, "a/duck.glb")]
    assert duck["group"] == f"org/models@{COMMIT}" and duck["uid"].startswith("github-") and duck["url"] is None
    ref = ObjectRef.from_row(rows[github_id("org", "models", COMMIT, "b.obj")])
    assert ref.annotations == {"license": "CC-BY", "github_organization": "org"} and ref.origin == "github"
    assert [r["origin"] for r in listed(src)][:2] == ["sketchfab", "smithsonian"]  # xl_sources order

    src.licenses, src.xl_sources = ["MIT", "proprietary"], ["thingiverse", "github"]
    assert sorted(r["file_type"] for r in listed(src)) == ["glb", "stl"]  # MIT duck, proprietary STL
    src.licenses, src.alignment = [], True
    assert [r["source"] for r in listed(src)] == [github_id("org", "models", COMMIT, "b.obj")]


def test_an_unreachable_hub_says_what_to_fetch_and_where_to_put_it(tmp_path):
    src = SourceConfig(kind="objaverse_xl", cache_dir=str(tmp_path / "empty"), xl_sources=["smithsonian"])
    src.xl_url = "http://127.0.0.1:9/objaverse-xl"  # a closed port: refused at once
    with pytest.raises(MissingInput) as err:
        list_source(src)
    message = str(err.value)
    assert (
        "Objaverse-XL smithsonian annotations" in message and "http://127.0.0.1:9/objaverse-xl/smithsonian" in message
    )
    assert str(tmp_path / "empty" / "smithsonian" / "smithsonian.parquet") in message and "source.cache_dir" in message
    (tmp_path / "empty" / "smithsonian").mkdir(parents=True, exist_ok=True)
    (tmp_path / "empty" / "smithsonian" / "smithsonian.parquet").write_bytes(b"<html>rate limited</html>")
    with pytest.raises(ConfigError, match="smithsonian.parquet: not a parquet file.*delete it"):
        list_source(src)  # a torn or wrong download in the cache
    with pytest.raises(ConfigError, match="source.xl_sources"):
        list_source(SourceConfig(kind="objaverse_xl", xl_sources=["polycam"]))
    # Objaverse 1.0 through the command line, as a new user without network meets it
    env = {**ENV, "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    res = subprocess.run(
        [sys.executable, "-m", "craftsman_platform.cli", "preprocess", "source.kind=objaverse",
         f"source.cache_dir={tmp_path / 'empty'}", f"output_dir={tmp_path / 'out'}"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert res.returncode == 2 and "could not download Objaverse's object paths" in res.stderr
    assert "object-paths.json.gz" in res.stderr and "source.cache_dir" in res.stderr and "urlopen" not in res.stderr


def listing(*rows: tuple) -> Listed:
    """(uid, origin, sha) rows as a source would list them."""
    cols = {"uid": [r[0] for r in rows], "source": [f"src/{r[0]}" for r in rows], "origin": [r[1] for r in rows],
            "listed_sha256": [r[2] for r in rows]}  # fmt: skip
    return Listed(iter([listing_batch(cols)]), len(rows))


def done(*rows: tuple) -> list[pa.RecordBatch]:
    """(uid, status, reason, listed sha, fetched sha, duplicate_of) manifest rows."""
    names = ["uid", "status", "reason", "listed_sha256", "source_sha256", "duplicate_of"]
    return [
        pa.RecordBatch.from_pylist(
            [dict(zip(names, r)) for r in rows], schema=pa.schema([(n, pa.string()) for n in names])
        )
    ]


def plan_of(source: Listed, rows: list, retry_failed: bool = False):
    with make_plan(source, iter(rows), retry_failed, None, None, 8) as plan:
        todo = [r.uid for run in plan.groups() for r in run]
        dups = {r["uid"]: r["duplicate_of"] for b in plan.duplicates() for r in b.to_pylist()}
        return todo, dups, sorted(plan.superseded)


def test_duplicates_keep_the_outputs_copy_else_the_first_listed_and_fall_back_when_it_cannot_be_fetched():
    rows = (("s1", "sketchfab", "A"), ("g1", "github", "A"), ("g2", "github", "A"), ("g3", "github", "B"),
            ("t1", "thingiverse", None), ("g4", "github", "C"))  # fmt: skip
    todo, dups, gone = plan_of(listing(*rows), [])
    assert sorted(todo) == ["g3", "g4", "s1", "t1"] and dups == {"g1": "s1", "g2": "s1"} and not gone
    # the output holds content A (an object of another listing) and C's copy failed on its content
    held = done(("x9", "ok", None, None, "A"), ("g4", "failed", "watertight_failed", "C", None, None),
                ("g1", "duplicate", None, "A", None, "s1"), ("g2", "duplicate", None, "A", None, "s1"))  # fmt: skip
    todo, dups, gone = plan_of(listing(*rows), held)
    assert sorted(todo) == ["g3", "t1"] and dups == {"s1": "x9", "g1": "x9", "g2": "x9"}
    assert gone == ["g1", "g2"]  # their rows named s1: replaced
    # the kept copy was never fetched (its repository is gone): the next copy is kept on the next run
    held = done(("s1", "failed", "not_found", "A", None, None), ("g1", "duplicate", None, "A", None, "s1"),
                ("g2", "duplicate", None, "A", None, "s1"))  # fmt: skip
    todo, dups, gone = plan_of(listing(*rows), held)
    assert "g1" in todo and dups == {"g2": "g1"} and gone == ["g1", "g2"]
    # unchanged verdicts write nothing again; a transient failure is tried again, its row superseded
    held = done(("s1", "failed", "fetch_failed", "A", None, None), ("g1", "duplicate", None, "A", None, "s1"),
                ("g2", "duplicate", None, "A", None, "s1"), ("g3", "ok", None, "B", "B", None),
                ("g3", "failed", "timeout", "B", None, None))  # fmt: skip
    todo, dups, gone = plan_of(listing(*rows), held)
    assert sorted(todo) == ["g4", "s1", "t1"] and dups == {} and gone == ["g3", "s1"]


def test_manifest_parts_recover_journals_convert_an_earlier_layout_and_supersede_rows(tmp_path):
    out = Output(str(tmp_path))
    (tmp_path / "shards").mkdir()
    (tmp_path / "journal").mkdir()
    for i, uids in enumerate((["a", "b"], ["c"], ["d"])):  # three committed shards, journals as written
        (tmp_path / "shards" / f"shard-{i:06d}.tar").write_bytes(b"x" * (10 + i))
        rows = [{"uid": u, "status": "ok", "source": u, "shard": f"shard-{i:06d}.tar", "chamfer": 0.01} for u in uids]
        out.write_json(f"journal/shard-{i:06d}.json", {"shard": f"shard-{i:06d}.tar", "bytes": 10 + i, "rows": rows})
    out.write_bytes("journal/failed-old-00000.jsonl", b'{"uid": "e", "status": "failed", "reason": "unreadable"}\n')
    pq.write_table(pa.table({"uid": ["a"]}), tmp_path / "manifest.parquet")  # an earlier version's manifest
    (tmp_path / "shards" / "shard-000002.tar").write_bytes(b"resized")  # its journal is dropped, d is redone

    parts = ManifestParts(out)
    store = ShardStore(out, parts)
    committed, dropped = store.recover_shards(parts.shard_sizes())
    assert dropped == {"shard-000002.tar"} and len(committed) == 2
    assert parts.reconcile(store, committed, dropped) == {"journals_recovered": 2, "legacy_failure_journals": 1}
    assert not (tmp_path / "manifest.parquet").exists() and not list((tmp_path / "journal").glob("failed-*"))
    assert sorted((r["uid"], r["status"]) for r in manifest_rows(tmp_path)) == [
        ("a", "ok"), ("b", "ok"), ("c", "ok"), ("e", "failed")]  # fmt: skip
    # a second start reads the shard sizes from the parts alone and adds nothing
    again = ManifestParts(out)
    assert again.shard_sizes() == {"shard-000000.tar": 10, "shard-000001.tar": 11}
    assert again.reconcile(store, *store.recover_shards(again.shard_sizes())) == {
        "journals_recovered": 0, "legacy_failure_journals": 0}  # fmt: skip
    again.add("failed", [{"uid": "f", "status": "failed", "reason": "timeout"}])
    again.flush()
    assert again.supersede(pa.array(["e", "f", "a"])) == 2  # failures only: ok rows are final
    assert sorted(read_manifest(str(tmp_path), ["uid"]).column("uid").to_pylist()) == ["a", "b", "c"]


def test_a_groups_objects_come_in_runs_of_at_most_group_max():
    cols = {"uid": [f"g{i}" for i in range(5)] + ["solo"], "source": [f"s{i}" for i in range(6)],
            "origin": ["github"] * 6, "group": ["org/repo@c"] * 5 + [None]}  # fmt: skip
    with make_plan(Listed(iter([listing_batch(cols)]), 6), iter([]), False, None, None, 2) as plan:
        runs = [[(r.uid, r.last_in_group) for r in run] for run in plan.groups()]
    assert runs == [[("g0", False), ("g1", True)], [("g2", False), ("g3", True)], [("g4", True)], [("solo", True)]]


def test_captions_files_join_by_uid_and_malformed_ones_name_the_line(tmp_path):
    from craftsman_platform.shapedata.captions import caption_batches

    def read(path) -> list[tuple]:
        return [(r["uid"], r["caption"]) for b in caption_batches(str(path)) for r in b.to_pylist()]

    cap3d = tmp_path / "Cap3D.csv"  # Cap3D's layout: no header, commas inside quoted captions
    cap3d.write_text('a1,"a red chair, wooden legs"\nb2,une chaise ✓ café\na1,a chair\n', encoding="utf-8")
    assert read(cap3d) == [("a1", "a red chair, wooden legs"), ("b2", "une chaise ✓ café"), ("a1", "a chair")]
    tsv = tmp_path / "caps.tsv"
    tsv.write_text("caption\tuid\textra\nthe cube\tc3\tx\n")  # a header names the columns, in any order
    assert read(tsv) == [("c3", "the cube")]
    pq.write_table(pa.table({"object_uid": ["d4"], "text": ["a lamp"]}), tmp_path / "caps.parquet")
    assert read(tmp_path / "caps.parquet") == [("d4", "a lamp")]
    for body, line in (("a1,ok\nb2\n", ":2:"), ("a1,ok\n,missing uid\n", ":2: an empty uid"),
                       ("a1,ok\nb2,x,y\n", ":2:")):  # fmt: skip
        (tmp_path / "bad.csv").write_text(body)
        with pytest.raises(ConfigError, match=f"bad.csv{line}"):
            read(tmp_path / "bad.csv")
    (tmp_path / "latin.csv").write_bytes(b"a1,ok\nb2,caf\xe9\n")
    with pytest.raises(ConfigError, match="latin.csv:2: not UTF-8"):
        read(tmp_path / "latin.csv")
    # joined in the listing: several captions kept in order, an object without any has none
    cols = {"uid": ["a1", "b2", "z9"], "source": ["s1", "s2", "s3"], "origin": ["list"] * 3}
    with make_plan(Listed(iter([listing_batch(cols)]), 3), iter([]), False, None, None, 8,
                   captions=caption_batches(str(cap3d))) as plan:  # fmt: skip
        got = {r.uid: r.captions for run in plan.groups() for r in run}
    assert got == {"a1": ("a red chair, wooden legs", "a chair"), "b2": ("une chaise ✓ café",), "z9": ()}
    from craftsman_platform.shapedata.captions import from_metadata

    note = {"name": "old_chair", "tags": ["wood", "antique"], "description": "A chair.  Made in 1900. More."}
    assert from_metadata(note) == ["old chair, wood, antique", "A chair"] and from_metadata({}) == []
