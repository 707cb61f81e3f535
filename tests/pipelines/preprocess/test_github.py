"""GitHub objects of Objaverse-XL in a task slot: real repositories cloned by file:// URL at the listed
commit (one clone per group), a Git LFS file, a clone that fails, paths that leave the repository."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from xl_data import github_id, make_repo, sha256

from craftsman_platform.pipelines.preprocess.sources import ObjectRef
from craftsman_platform.pipelines.preprocess.sources import github as gh


def ref(org: str, repo: str, commit: str, path: str, last: bool = False) -> ObjectRef:
    return ObjectRef("u", github_id(org, repo, commit, path), origin="github", group=f"{org}/{repo}@{commit}",
                     last_in_group=last)  # fmt: skip


def test_a_group_is_cloned_once_at_its_commit_with_lfs_files_and_removed_after(tmp_path, pybullet_dir):
    duck, cube = (pybullet_dir / "duck.obj").read_bytes(), (pybullet_dir / "cube.obj").read_bytes()
    commit = make_repo(tmp_path, "org", "models", {"m/duck.obj": duck, "cube.glb": cube}, lfs=("*.glb",))
    base = (tmp_path).as_uri()
    with gh.checkout(ref("org", "models", commit, "m/duck.obj"), base, 60) as path:
        folder = gh._Clone.folder
        assert path.read_bytes() == duck and not (folder / "README.md").exists()  # the listed commit, not main
    with gh.checkout(ref("org", "models", commit, "cube.glb", last=True), base, 60) as path:
        assert gh._Clone.folder == folder  # the same clone
        assert sha256(path.read_bytes()) == sha256(cube)  # the LFS object, not its pointer
    assert not folder.exists() and gh._Clone.folder is None  # gone after the group's last object
    with pytest.raises(FileNotFoundError, match="not in org/models"):
        with gh.checkout(ref("org", "models", commit, "m/missing.obj", last=True), base, 60):
            pass


def test_a_failed_clone_fails_its_group_without_cloning_again(tmp_path, pybullet_dir):
    base = tmp_path.as_uri()
    commit = "0" * 40
    with pytest.raises(gh.CloneFailed, match="git fetch"):
        with gh.checkout(ref("gone", "models", commit, "a.obj"), base, 60):
            pass
    # the repository appears now: the group's next object still fails at once (its clone is not retried)
    make_repo(tmp_path, "gone", "models", {"a.obj": b"v 0 0 0\n"})
    with pytest.raises(gh.CloneFailed):
        with gh.checkout(ref("gone", "models", commit, "b.obj", last=True), base, 60):
            pass
    assert gh._Clone.folder is None


def test_paths_cannot_leave_the_repository(tmp_path):
    outside = tmp_path / "secret.obj"
    outside.write_bytes(b"v 0 0 0\n")
    commit = make_repo(tmp_path, "org", "evil", {"link.obj": b"placeholder"})
    work = tmp_path / "work" / "org" / "evil"
    (work / "link.obj").unlink()
    os.symlink(outside, work / "link.obj")  # a symlink committed into the repository
    from xl_data import git

    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "symlink", cwd=work)
    commit = git("rev-parse", "HEAD", cwd=work).strip()
    git("push", "-q", "origin", "main", cwd=work)
    for rel in ("link.obj", "../../../secret.obj"):
        with pytest.raises(FileNotFoundError):
            with gh.checkout(ref("org", "evil", commit, rel, last=True), tmp_path.as_uri(), 60):
                pass


def test_clones_of_processes_that_are_gone_are_removed():
    dead = Path(tempfile.mkdtemp(prefix=f"{gh.CLONE_PREFIX}999999999-"))
    alive = Path(tempfile.mkdtemp(prefix=f"{gh.CLONE_PREFIX}{os.getpid()}-"))
    try:
        assert gh.remove_stale_clones() >= 1
        assert not dead.exists() and alive.exists()
    finally:
        alive.rmdir()
