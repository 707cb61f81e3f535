"""Objaverse-XL's GitHub objects: each is a file in a repository at a commit. The driver gives a task
slot all the objects of one repository at one commit in a row (a group, split past
`source.group_max`); the slot clones the repository once for them, shallow (that commit only), LFS
files pulled as the objaverse package does, and deletes the clone after the group's last object.

A clone that fails for good (the repository deleted, renamed or private, the commit gone) fails
each object of its group with `clone_failed`, without cloning again; network trouble is a
`TransientError` (retried). A clone left by a killed process is removed by the next one on its node.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psutil

from craftsman_platform.pipelines.preprocess.sources import ObjectRef, TransientError
from craftsman_platform.pipelines.preprocess.sources.objaverse_xl import parse_github

CLONE_PREFIX = "craft-clone-"
_NETWORK = re.compile(
    r"could not resolve host|connection (refused|reset|timed out)|timed out|failed to connect|early eof|rpc failed"
    r"|returned error: (5\d\d|408|429)|unexpected disconnect|temporary failure|ssl|tls|remote end hung up",
    re.IGNORECASE,
)
_UNADVERTISED = re.compile(r"not our ref|unadvertised|couldn't find remote ref|no such remote ref", re.IGNORECASE)
_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_LFS_SKIP_SMUDGE": "1", "GIT_ASKPASS": "true"}  # never wait for a password


class CloneFailed(Exception):
    """The repository could not be cloned at the object's commit (final: `clone_failed`)."""


class _Clone:
    """The one clone a process holds: its group, folder, or the error that group's clone gave."""

    group: str | None = None
    folder: Path | None = None
    error: CloneFailed | None = None
    swept = False


@contextmanager
def checkout(ref: ObjectRef, base_url: str, timeout_s: float) -> Iterator[Path]:
    """The object's file in its group's clone (cloned first if this process holds another)."""
    org, repo, commit, rel = parse_github(ref.source)
    try:
        root = _clone(ref.group or f"{org}/{repo}@{commit}", f"{base_url.rstrip('/')}/{org}/{repo}.git", commit,
                      timeout_s)  # fmt: skip
        path = (root / rel).resolve()
        if not path.is_relative_to(root.resolve()):
            raise FileNotFoundError(errno.ENOENT, f"{rel} points outside its repository {org}/{repo}")
        if not path.is_file():
            raise FileNotFoundError(errno.ENOENT, f"{rel} is not in {org}/{repo} at {commit}")
        yield path
    finally:
        if ref.last_in_group:
            drop()


def drop() -> None:
    """Delete this process's clone."""
    if _Clone.folder is not None:
        shutil.rmtree(_Clone.folder, ignore_errors=True)
    _Clone.group, _Clone.folder, _Clone.error = None, None, None


def _clone(group: str, url: str, commit: str, timeout_s: float) -> Path:
    if _Clone.group == group:
        if _Clone.error is not None:
            raise CloneFailed(str(_Clone.error))
        return _Clone.folder
    drop()
    if not _Clone.swept:
        remove_stale_clones()
        _Clone.swept = True
    folder = Path(tempfile.mkdtemp(prefix=f"{CLONE_PREFIX}{os.getpid()}-"))
    try:
        _git(["init", "-q", str(folder)], None, timeout_s)
        _git(["remote", "add", "origin", url], folder, timeout_s)  # git lfs pull fetches from the remote's URL
        try:  # only that commit (GitHub serves a commit by its hash)
            _git(["fetch", "-q", "--depth", "1", "--no-tags", "origin", commit], folder, timeout_s)
        except CloneFailed as err:  # a server that serves advertised refs only: its HEAD, if that is the commit
            if not _UNADVERTISED.search(str(err)):
                raise
            _git(["fetch", "-q", "--depth", "1", "--no-tags", "origin", "HEAD"], folder, timeout_s)
            head = _git(["rev-parse", "FETCH_HEAD"], folder, timeout_s).strip()
            if not head.startswith(commit):
                raise CloneFailed(f"{url}: commit {commit} is not served (HEAD is {head[:12]})") from None
        _git(["-c", "advice.detachedHead=false", "checkout", "-q", "FETCH_HEAD"], folder, timeout_s)
        if _uses_lfs(folder):
            if shutil.which("git-lfs") is None:
                raise CloneFailed(f"{url} keeps files in Git LFS and git-lfs is not installed on this node")
            _git(["lfs", "pull"], folder, timeout_s)
    except (CloneFailed, TransientError) as err:
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(err, CloneFailed):  # final: the group's other objects fail at once
            _Clone.group, _Clone.error = group, err
        raise
    _Clone.group, _Clone.folder = group, folder
    return folder


def _uses_lfs(folder: Path) -> bool:
    attributes = folder / ".gitattributes"
    return attributes.is_file() and "filter=lfs" in attributes.read_text(errors="replace")


def _git(args: list[str], cwd: Path | None, timeout_s: float) -> str:
    """Run git; its failure is a CloneFailed, or a TransientError for network trouble."""
    try:
        done = subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **_ENV}, capture_output=True, text=True,
                              timeout=timeout_s, preexec_fn=_die_with_parent)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise TransientError(f"git {args[0]} took more than {timeout_s:.0f} s") from None
    if done.returncode:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        message = f"git {args[0]}: {lines[-1] if lines else f'exit {done.returncode}'}"[:400]
        raise (TransientError if _NETWORK.search(done.stderr) else CloneFailed)(message)
    return done.stdout


def _die_with_parent() -> None:
    """In git's process: die when the task slot's process dies (a timeout kills the slot's actor)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except OSError:
        pass


def remove_stale_clones() -> int:
    """Delete clones of processes that are gone (a slot killed mid-group); returns how many."""
    removed = 0
    for folder in Path(tempfile.gettempdir()).glob(f"{CLONE_PREFIX}*-*"):
        pid = folder.name.removeprefix(CLONE_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed
