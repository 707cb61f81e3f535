"""Errors a user fixes by changing the command: `craft` prints them as one line and exits 2."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad key, value or path in the configuration, found before any work is done (exit 2)."""


class MissingInput(ConfigError, FileNotFoundError):
    """A path the configuration names does not exist or holds nothing usable (exit 2)."""


class NothingDone(RuntimeError):
    """The job ran but produced nothing (no inputs, or every object failed): exit 1 with its reason."""


class DiskFull(OSError):
    """No space left where a job writes; the message names the path (exit 1)."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def raise_if_disk_full(err: BaseException, path) -> None:
    """Raise DiskFull naming `path` when `err` came from a full disk: ENOSPC anywhere in its chain, or
    a library's own wording of it (torch's "unexpected pos") with the device's space used up."""
    import errno
    import shutil

    chain, seen = err, False
    while chain is not None:
        seen |= getattr(chain, "errno", None) == errno.ENOSPC
        chain = chain.__cause__ or chain.__context__
    if not seen and "unexpected pos" in str(err):
        try:
            seen = shutil.disk_usage(path).free < 16 * 2**20
        except OSError:
            pass
    if seen:
        raise DiskFull(errno.ENOSPC, f"no space left on the device holding {path}") from err


def check_writable(path: str, key: str) -> None:
    """Refuse, naming the key, a folder that cannot be created or written (read-only mounts, no rights)."""
    import os
    import tempfile
    from pathlib import Path

    folder = Path(path)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    target = folder if folder.exists() else existing
    if target is None or not target.is_dir():
        raise ConfigError(f"{key}={path}: {target} is not a folder")
    if not os.access(target, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path}: {target} is not writable")
    try:  # a real probe (root passes os.access everywhere, /proc included); nothing is left behind
        if folder.exists():
            with tempfile.TemporaryFile(dir=folder):
                pass
        else:
            os.rmdir(tempfile.mkdtemp(dir=target))
    except OSError as err:
        where = "there" if folder.exists() else f"in {target}"
        raise ConfigError(f"{key}={path}: cannot write {where} ({err.strerror})") from None
