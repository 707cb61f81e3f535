"""The job's own failure reasons (the loader's are craftsman_platform.geometry.mesh_io.REASONS), and
what a recorded failure means for the next run."""

from __future__ import annotations

JOB_REASONS = {
    "not_found": "the source does not exist (a missing file, HTTP 404, no such object in the bucket, a file not in "
    "its repository at the listed commit)",
    "fetch_failed": "the source could not be fetched after max_retries (DNS, refused or reset connection, "
    "network timeout, HTTP 5xx/408/429); retried again on the next run",
    "clone_failed": "the object's GitHub repository could not be cloned at its commit (deleted, renamed or private "
    "repository, commit gone, git-lfs missing on the node)",
    "sha256_mismatch": "the fetched file's sha256 differs from the one its listing gives (the file changed since "
    "the annotations were made)",
    "timeout": "no result within timeout_s; the worker was killed (retried with retry_failed=true)",
    "worker_crashed": "the worker process died (out of memory, lost node); retried again on the next run",
    "error": "an unexpected error in the pipeline or a library, with its message",
}
RETRIED_ON_RERUN = ("fetch_failed", "worker_crashed")
# Failures before the object's content was in hand: they hold no content, so another listed copy of
# the same content is kept instead (on the next run).
NO_CONTENT = ("not_found", "fetch_failed", "clone_failed", "sha256_mismatch", "worker_crashed")
