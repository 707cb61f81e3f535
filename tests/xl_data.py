"""Objaverse-XL test data made on the fly: annotation files in the objaverse package's schema and cache
layout, and real git repositories (one with a Git LFS file) served by file:// URLs."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

XL_COLUMNS = ("fileIdentifier", "source", "license", "fileType", "sha256", "metadata")
_GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_annotations(cache: Path, source: str, rows: list[dict], name: str | None = None) -> Path:
    """CACHE/<source>/<source>.parquet (or `name`) with the package's columns; rows give fileIdentifier,
    and optionally license, fileType, sha256 (of `data` if given), metadata."""
    table = pa.table(
        {
            "fileIdentifier": [r["fileIdentifier"] for r in rows],
            "source": [source] * len(rows),
            "license": [r.get("license", "CC-BY") for r in rows],
            "fileType": [r.get("fileType", "glb") for r in rows],
            "sha256": [r.get("sha256") or sha256(r["data"]) for r in rows],
            "metadata": [r.get("metadata", "{}") for r in rows],
        }
    )
    path = cache / source / (name or f"{source}.parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, **_GIT_ENV}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def make_repo(root: Path, org: str, repo: str, files: dict[str, bytes], lfs: tuple[str, ...] = ()) -> str:
    """A bare repository ROOT/org/repo.git holding `files` in one commit (patterns in `lfs` kept in
    Git LFS), then a second commit on top, so the listed commit is not the branch's head. Returns
    the listed commit's hash."""
    work = root / "work" / org / repo
    work.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=work)
    if lfs:
        git("lfs", "install", "--local", cwd=work)
        git("lfs", "track", *lfs, cwd=work)
    for rel, data in files.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_bytes(data)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "objects", cwd=work)
    commit = git("rev-parse", "HEAD", cwd=work).strip()
    (work / "README.md").write_text("a later commit\n")
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "later", cwd=work)
    bare = root / org / f"{repo}.git"
    bare.parent.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "--bare", str(bare), cwd=root)
    git("remote", "add", "origin", bare.as_uri(), cwd=work)
    git("push", "-q", "origin", "main", cwd=work)  # LFS objects go along (git-lfs's file:// transfer)
    return commit


def github_id(org: str, repo: str, commit: str, path: str) -> str:
    return f"https://github.com/{org}/{repo}/blob/{commit}/{path}"
