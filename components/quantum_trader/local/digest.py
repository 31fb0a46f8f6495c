"""The digests ``qt digest`` prints: a local image's registry digest, the one a TradingPolicy's ``image``
is pinned to, or a content digest of this checkout, which names the code an image would be built from.

A freshly built image has no registry digest: the registry assigns it when the image is pushed, so
that is what the error says, rather than printing the local image id (which no cluster can pull).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path


class DigestError(RuntimeError):
    pass


def tree_digest(files: Iterable[tuple[str, bytes]]) -> str:
    """``sha256:<hex>`` over (path, content) pairs, independent of their order."""
    outer = hashlib.sha256()
    for path, content in sorted(files):
        outer.update(path.encode() + b"\0" + hashlib.sha256(content).hexdigest().encode() + b"\n")
    return f"sha256:{outer.hexdigest()}"


def pick_repo_digest(image: str, repo_digests: list[str]) -> str:
    """The ``repo@sha256:...`` of ``image`` among an image's RepoDigests (the one of its repository first)."""
    if not repo_digests:
        raise DigestError(
            f"image {image} has no registry digest yet: push it (docker push {image}), then run this again"
        )
    repository = image.rsplit("@", 1)[0]
    if ":" in repository.rsplit("/", 1)[-1]:
        repository = repository.rsplit(":", 1)[0]
    for entry in repo_digests:
        if entry.split("@", 1)[0] == repository:
            return entry
    return repo_digests[0]


def image_digest(image: str) -> str:
    docker = shutil.which("docker")
    if docker is None:
        raise DigestError("docker is not installed: the digest of an image comes from `docker image inspect`")
    answer = subprocess.run(
        [docker, "image", "inspect", "--format", "{{json .RepoDigests}}", image],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if answer.returncode != 0:
        reason = (answer.stderr.strip().splitlines() or ["docker image inspect failed"])[-1]
        raise DigestError(f"cannot inspect image {image}: {reason}")
    return pick_repo_digest(image, json.loads(answer.stdout or "[]") or [])


def checkout_digest(start: Path) -> tuple[str, str]:
    """(digest of every tracked file as it is on disk, ``<commit>`` or ``<commit>-dirty``) of the checkout."""
    git = shutil.which("git")
    if git is None:
        raise DigestError("git is not installed: the digest of a checkout is taken over its tracked files")

    def run(*args: str) -> str:
        answer = subprocess.run([git, "-C", str(start), *args], capture_output=True, timeout=60)
        if answer.returncode != 0:
            raise DigestError(f"{start} is not a git checkout (give an IMAGE to digest an image instead)")
        return answer.stdout.decode("utf-8", "surrogateescape")

    root = Path(run("rev-parse", "--show-toplevel").strip())
    commit = run("rev-parse", "HEAD").strip()
    dirty = bool(run("status", "--porcelain", "--untracked-files=no").strip())
    files = []
    for name in run("ls-files", "-z", "--full-name", str(root)).split("\0"):
        path = root / name
        if name and path.is_file():
            files.append((name, path.read_bytes()))
    return tree_digest(files), commit + ("-dirty" if dirty else "")
