"""`craft pack`: an archive (`craft preprocess` output) -> a pack of compact shards for one task.

One Ray task per archive shard writes that shard's chunk shards itself (tasks own their shards:
a pack task's output is a pure function of one archive shard, so a retried task rewrites the same
names); the driver journals each shard in the shared shard store, so a killed job resumes where it
stopped, exactly once, on a local folder or object storage. For latents, the VAE encoder runs in
encoder actors, one per GPU of the cluster, fed batches of surface chunks by the tasks, or inside
each task on a CPU-only cluster. Layout and identity: shapedata/pack.py, docs/data-format.md.
"""

from __future__ import annotations

import logging
import time

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from craftsman_platform.errors import ConfigError, MissingInput, NothingDone
from craftsman_platform.models.checkpoints import find_vae_checkpoint, weights_identity
from craftsman_platform.paths import CONF_DIR
from craftsman_platform.pipelines.lock import OutputLock
from craftsman_platform.pipelines.pack.config import PackConfig
from craftsman_platform.pipelines.pack.run import run_parts
from craftsman_platform.pipelines.pack.select import column_names, select_rows
from craftsman_platform.pipelines.preprocess.job import validate_output
from craftsman_platform.pipelines.shardstore import ShardStore, shard_name
from craftsman_platform.pipelines.storage import Output
from craftsman_platform.shapedata.captions import caption_batches
from craftsman_platform.shapedata.manifest import has_manifest, manifest_columns, read_manifest
from craftsman_platform.shapedata.pack import KINDS, PACK_FILE, PACK_VERSION, pack_shard_index
from craftsman_platform.shapedata.views import SET_SIZE

log = logging.getLogger("craft.pack")
VAE_CHUNKS = 16  # default chunk series of a vae pack: 16 epochs of fresh points
IDENTITY_KEYS = ("kind", "version", "source", "select", "recipe", "vae")


# ---------------------------------------------------------------------------------------------
# The archive and the recipe
# ---------------------------------------------------------------------------------------------


def read_archive(cfg: PackConfig) -> tuple[Output, dict, pd.DataFrame, dict[str, int]]:
    """(store, config.json, manifest, {committed shard: bytes}) of the archive; errors name `source`."""
    try:
        src = Output(cfg.source, cfg.storage_options)
    except ImportError as err:
        raise ConfigError(f"source={cfg.source}: {err} (pip install 'craftsman-platform[cloud]')") from None
    if not src.exists("config.json") or not has_manifest(src.url, src.storage_options):
        raise MissingInput(
            f"source={cfg.source}: no config.json or manifest (expected the output_dir of `craft preprocess`)"
        )
    present = manifest_columns(src.url, src.storage_options)
    wanted = ["uid", "status", "shard", *(c for c in column_names(cfg.select) if c in present)]
    manifest = read_manifest(src.url, list(dict.fromkeys(wanted)), src.storage_options).to_pandas()
    manifest.attrs["columns"] = present  # what select= may name
    sizes = src.sizes("shards")
    return src, src.read_json("config.json"), manifest, sizes


def make_recipe(cfg: PackConfig, archive_config: dict) -> tuple[dict, dict | None]:
    """(recipe, the VAE's identity for latents): everything that decides a pack's bytes."""
    if cfg.kind == "vae":
        recipe = {
            "chunks": cfg.chunks or VAE_CHUNKS,
            "num_surface": cfg.num_surface or 4096,
            "num_vol": cfg.num_vol,
            "num_near": cfg.num_near,
            "seed": cfg.seed,
        }
        return recipe, None
    ckpt, model = find_vae_checkpoint(cfg.vae_checkpoint, "vae_checkpoint", "kind=latents")
    sets = 1 + int(archive_config["render"]["extra_sets"])
    if cfg.num_surface is not None and cfg.num_surface != model["vae"]["num_inputs"]:
        raise ConfigError(
            f"num_surface={cfg.num_surface}, but the VAE encodes num_inputs={model['vae']['num_inputs']} points"
        )
    recipe = {
        "chunks": cfg.chunks or sets,
        "num_surface": model["vae"]["num_inputs"],
        "view_sets": sets,
        "views_per_set": SET_SIZE,
        "image_size": cfg.image_size,
        "latent_dtype": cfg.encode.dtype,
        "seed": cfg.seed,
        "captions": _file_identity(cfg.captions, cfg.storage_options) if cfg.captions else None,
    }
    vae = {**weights_identity(ckpt, prefer_ema=True), "model": model["vae"]}
    return recipe, vae


def validate(cfg: PackConfig) -> None:
    if cfg.kind not in KINDS:
        raise ConfigError(f"kind={cfg.kind!r}: expected one of {', '.join(KINDS)}")
    for key in ("chunks", "num_surface", "workers"):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    for key in ("num_vol", "num_near", "image_size", "encode.batch_size"):
        value = OmegaConf.select(OmegaConf.structured(cfg), key)
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    if cfg.encode.dtype not in ("float16", "float32"):
        raise ConfigError(f"encode.dtype={cfg.encode.dtype!r}: expected float16 or float32")
    if cfg.encode.device not in ("auto", "cpu", "cuda") and not cfg.encode.device.startswith("cuda:"):
        raise ConfigError(f"encode.device={cfg.encode.device!r}: expected auto, cpu or cuda[:N]")


# ---------------------------------------------------------------------------------------------
# Identity: a pack is resumed only by the same command
# ---------------------------------------------------------------------------------------------


def _file_identity(url: str, storage_options: dict) -> dict:
    """A pack-time input by name and content (a resume with another captions file is refused)."""
    import hashlib

    import fsspec

    digest = hashlib.sha256()
    try:
        with fsspec.open(url, "rb", **storage_options) as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        raise MissingInput(f"captions={url}: no such file") from None
    return {"file": url, "sha256": digest.hexdigest()}


def pack_captions(cfg: PackConfig, uids: set[str]) -> dict[str, list[str]]:
    """uid -> captions from `captions=FILE`, for the packed objects only ({} without a file)."""
    if not cfg.captions:
        return {}
    if cfg.kind != "latents":
        raise ConfigError("captions=FILE: only latents packs hold captions (a vae pack trains the VAE)")
    found: dict[str, list[str]] = {}
    for batch in caption_batches(cfg.captions, cfg.storage_options):
        for uid, caption in zip(batch.column("uid").to_pylist(), batch.column("caption").to_pylist()):
            if uid in uids:
                found.setdefault(uid, []).append(caption)
    log.info("captions: %d of the %d objects have some in %s", len(found), len(uids), cfg.captions)
    return found


def check_identity(out: Output, identity: dict) -> None:
    if not out.exists(PACK_FILE):
        return
    before = out.read_json(PACK_FILE)
    differ = [k for k in IDENTITY_KEYS if before.get(k) != identity[k]]
    if differ:
        raise ConfigError(
            f"{out.display()} holds a pack made with other {', '.join(differ)} (see {out.display(PACK_FILE)}): "
            "use a new output_dir, or the same command to resume it"
        )


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def pack(cfg: PackConfig) -> dict:
    """Build (or resume) the pack `cfg` describes; returns its pack.json."""
    validate(cfg)
    out = validate_output(cfg.output_dir, cfg.storage_options)
    src, archive_config, manifest, sizes = read_archive(cfg)
    ok = manifest[manifest["status"] == "ok"]
    ok.attrs["columns"] = manifest.attrs["columns"]
    chosen = ok[select_rows(ok, cfg.select)]
    if chosen.empty:
        raise NothingDone(f"no object of {cfg.source} ({len(ok)} ok) matches select={cfg.select!r}")
    missing = sorted(set(chosen["shard"]) - set(sizes))
    if missing:
        raise MissingInput(f"source={cfg.source}: the manifest names shards that are not there: {missing[:3]}")
    recipe, vae = make_recipe(cfg, archive_config)
    given = pack_captions(cfg, set(chosen["uid"]))
    shards = sorted(set(chosen["shard"]))
    identity = {
        "kind": cfg.kind,
        "version": PACK_VERSION,
        "source": {
            "url": src.url,
            "config_hash": archive_config["config_hash"],
            "shards": [{"name": s, "bytes": sizes[s]} for s in shards],
        },
        "select": cfg.select,
        "recipe": recipe,
        "vae": vae,
    }
    check_identity(out, identity)
    with OutputLock(out, cfg.lock_stale_s) as lock:
        if not out.exists(PACK_FILE):
            out.write_json(PACK_FILE, {**identity, "complete": False})
        store = ShardStore(out)
        done, earlier_failed = store.recover()
        committed = set(out.sizes("journal"))
        chunks = recipe["chunks"]
        todo = []
        for part, shard in enumerate(shards):
            left = [c for c in range(chunks) if _journal(part, c, chunks) not in committed]
            if left:  # the part's objects, with the captions given for them at pack time (None: the archive's)
                uids = {u: given.get(u) for u in chosen.loc[chosen["shard"] == shard, "uid"]}
                todo.append((part, src.display("shards/" + shard), left, uids))
        log.info("%d archive shards, %d to pack (%d objects) -> %s", len(shards), len(todo), len(chosen), out.url)
        t0 = time.monotonic()
        results, errors, startup = run_parts(todo, cfg, recipe, store, lock) if todo else ({}, {}, 0.0)
        seconds = time.monotonic() - t0 - startup
        store.remove_uncommitted()
        rows = _manifest_rows(out, shards, chunks)
        failed = {r["uid"]: r for r in earlier_failed.values()}
        for res in results.values():
            failed.update({r["uid"]: r for r in res["failed"]})
        failed = {u: r for u, r in failed.items() if u not in rows}
        store.write_manifest(list(rows.values()) + list(failed.values()))
        parts = _parts(out, shards, chunks)
        info = {
            **identity,
            # every archive shard with a packed object has all its chunks (one pass over the rows)
            "complete": not errors and len(parts) == len({r["source_shard"] for r in rows.values()}),
            "parts": parts,
            "objects": len(rows),
            "captioned": sum(1 for r in rows.values() if r["n_captions"]),  # objects a text model can learn from
            "failed": len(failed),
            "bytes": sum(out.sizes("shards").values()),
        }
        info["this_run"] = {
            "parts": len(todo),
            "objects": sum(r["objects"] for r in results.values()),
            "seconds": round(seconds, 2),  # after Ray's start
            "ray_start_s": round(startup, 2),
            "errors": errors,
        }
        out.write_json(PACK_FILE, info)
    return info


def _journal(part: int, chunk: int, chunks: int) -> str:
    return shard_name(pack_shard_index(part, chunk, chunks)).removesuffix(".tar") + ".json"


def _manifest_rows(out: Output, shards: list[str], chunks: int) -> dict[str, dict]:
    """One row per packed object, from the journals of its part's chunk-0 shard."""
    rows = {}
    for part, shard in enumerate(shards):
        name = "journal/" + _journal(part, 0, chunks)
        if out.exists(name):
            for row in out.read_json(name)["rows"]:
                rows[row["uid"]] = {"uid": row["uid"], "status": "ok", "source_shard": shard, "part": part,
                                    "n_captions": row.get("n_captions", 0)}  # fmt: skip
    return rows


def _parts(out: Output, shards: list[str], chunks: int) -> list[dict]:
    """Parts whose every chunk is committed: their archive shard and pack shards, by chunk."""
    committed = set(out.sizes("journal"))
    parts = []
    for part, shard in enumerate(shards):
        names = [shard_name(pack_shard_index(part, c, chunks)) for c in range(chunks)]
        if all(_journal(part, c, chunks) in committed for c in range(chunks)):
            parts.append({"part": part, "source_shard": shard, "shards": names})
    return parts


def format_summary(info: dict) -> str:
    run = info["this_run"]
    per = info["bytes"] / max(1, info["objects"] * info["recipe"]["chunks"])
    rate = run["objects"] / run["seconds"] if run["seconds"] else 0.0
    lines = [
        f"pack ({info['kind']}): {info['objects']} objects in {len(info['parts'])} parts x "
        f"{info['recipe']['chunks']} chunks, {info['failed']} failed, {info['bytes'] / 1e6:.1f} MB "
        f"({per / 1e3:.1f} KB per sample)",
        f"this run: {run['objects']} objects from {run['parts']} archive shards in {run['seconds']:.1f} s "
        f"({rate:.2f} objects/s)",
    ]
    lines += [f"  not packed: {name}: {why}" for name, why in sorted(run["errors"].items())]
    return "\n".join(lines)


@hydra.main(config_path=CONF_DIR, config_name="pack", version_base="1.3")
def main(dcfg: DictConfig) -> None:
    cfg: PackConfig = OmegaConf.to_object(dcfg)
    info = pack(cfg)
    print(format_summary(info))
    out = Output(cfg.output_dir, cfg.storage_options)
    print(f"pack: {out.display()}  (train with data.train_shards={out.display()})")
    if not info["complete"]:
        raise NothingDone(
            f"the pack is unfinished: {len(info['this_run']['errors'])} archive shards were not packed "
            "(reasons above); run the same command again to finish it"
        )
