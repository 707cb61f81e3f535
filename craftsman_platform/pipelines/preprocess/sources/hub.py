"""The index files a listing reads on the driver (Objaverse's object paths and annotations,
Objaverse-XL's annotation parquet files): from the cache folder where they are, else downloaded
into it. Without network, the error says what could not be fetched, from where, and where to put
the file instead."""

from __future__ import annotations

import logging
import os
import shutil
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from craftsman_platform.errors import MissingInput

log = logging.getLogger("craft.preprocess")
TIMEOUT_S = 60.0


def _why(err: BaseException) -> str:
    reason = getattr(err, "reason", None) or err
    return f"{type(reason).__name__}: {reason}" if not isinstance(reason, str) else reason


def unreachable(what: str, url: str, path: Path | str, err: BaseException) -> MissingInput:
    return MissingInput(
        f"could not download {what} from {url} ({_why(err)}); without network, put that file at {path} "
        "(source.cache_dir names the folder, in the objaverse package's cache layout) and run again"
    )


def cached_file(url: str, path: Path, what: str) -> Path:
    """`path`, downloaded from `url` first if it is not there (whole or not at all)."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    log.info("downloading %s from %s to %s", what, url, path)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(tmp, "wb") as fh:
            shutil.copyfileobj(response, fh, length=1 << 20)
        os.replace(tmp, path)
    except (urllib.error.URLError, OSError) as err:
        raise unreachable(what, url, path, err) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


@contextmanager
def hub_errors(what: str, url: str, path: Path | str) -> Iterator[None]:
    """Around a call of the objaverse package that may download `what`: its network error becomes one
    that names the file and where to put it (the package's own is '<urlopen error ...>')."""
    try:
        yield
    except urllib.error.URLError as err:
        raise unreachable(what, url, path, err) from None
