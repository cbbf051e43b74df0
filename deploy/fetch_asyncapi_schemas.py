"""Fetch the official AsyncAPI 3.0.0 and 2.6.0 JSON Schemas that the tests validate the bus documents with.

`make install` runs this file: `python deploy/fetch_asyncapi_schemas.py`. Standard library only, like
deploy/fetch_epcis_schema.py, whose pattern it follows.

The schemas are `package/schemas/3.0.0.json` and `package/schemas/2.6.0.json` of the npm package
@asyncapi/specs 6.11.1 (Apache-2.0; the AsyncAPI Initiative's bundled JSON Schemas, draft-07, each
definition under its own `$id`). The tarball is fetched with `npm pack` when npm is on the PATH (an npm
mirror configured for the machine is used), else straight from the registry over HTTPS; it is checked
against its pinned SHA-256 and npm's SHA-512 integrity, and each file taken out of it against its own
pinned SHA-256. Nothing else is extracted. The tarball stays in `.cache/npm/`, the schemas land in
`.cache/asyncapi/` (both git-ignored); a cached file that still matches its checksum is not fetched again.
Exits 1 with the reason when a schema cannot be had.
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

PACKAGE = "@asyncapi/specs"
VERSION = "6.11.1"
TARBALL_NAME = f"asyncapi-specs-{VERSION}.tgz"
TARBALL_URL = f"https://registry.npmjs.org/{PACKAGE}/-/specs-{VERSION}.tgz"
TARBALL_SHA256 = "01af8744dc33c0c7eb2e908f6a955319ee58b70ecadc9387d1aeb16c0cd28928"
TARBALL_INTEGRITY = (
    "sha512-A3WBLqAKGoJ2+6FWFtpjBlCQ1oFCcs4GxF7zsIGvNqp/klGUHjlA3aAcZ9XMMpLGE8zPeYDz2x9FmO6DSuKraQ=="
)
MEMBERS = {
    "3.0.0": (
        "package/schemas/3.0.0.json",
        "d4571a420e6ffb7fcc7066c95a6db1202f299a3c51daa103d0706bf30f95e626",
    ),
    "2.6.0": (
        "package/schemas/2.6.0.json",
        "4b0bfe579e3c98a1da14db72bbd22a446ae23d5ae347ec7873a4cb488e446583",
    ),
}
"""Each AsyncAPI version's schema: its path in the tarball and its pinned SHA-256."""

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
TARBALL_PATH = CACHE / "npm" / TARBALL_NAME
SCHEMA_DIR = CACHE / "asyncapi"


class FetchError(RuntimeError):
    pass


def schema_path(version: str) -> Path:
    """Where the AsyncAPI `version` schema is cached (tests/support/asyncapi.py reads it from here)."""
    return SCHEMA_DIR / f"{version}.json"


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
            print(f"fetch_asyncapi_schemas: {error}; fetching again", file=sys.stderr)
    TARBALL_PATH.parent.mkdir(parents=True, exist_ok=True)
    use_npm = via == "npm" or (via == "auto" and shutil.which("npm") is not None)
    try:
        if use_npm:
            print(f"fetch_asyncapi_schemas: npm pack {PACKAGE}@{VERSION}", flush=True)
            data = _npm_pack(TARBALL_PATH.parent)
        else:
            print(f"fetch_asyncapi_schemas: GET {TARBALL_URL}", flush=True)
            data = _download()
    except (OSError, subprocess.SubprocessError) as error:
        raise FetchError(f"cannot fetch {PACKAGE}@{VERSION}: {error}") from error
    check_tarball(data, f"{PACKAGE}@{VERSION}")
    _write(TARBALL_PATH, data)
    return data


def member_bytes(data: bytes, member_name: str, sha256: str) -> bytes:
    """One schema file out of the tarball, checked; nothing is extracted to disk but it."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        try:
            member = archive.getmember(member_name)
        except KeyError as error:
            raise FetchError(f"{TARBALL_NAME} has no {member_name}") from error
        extracted = archive.extractfile(member) if member.isfile() else None
        if extracted is None:
            raise FetchError(f"{member_name} in {TARBALL_NAME} is not a regular file")
        schema = extracted.read()
    if sha256_of(schema) != sha256:
        raise FetchError(f"{member_name}: sha256 {sha256_of(schema)} is not the pinned {sha256}")
    return schema


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + f".{os.getpid()}.part")
    temporary.write_bytes(data)
    temporary.replace(path)


def fetch(via: str = "auto") -> list[Path]:
    """The schema files in the cache, checked; the tarball is fetched only when one is missing or stale."""
    data: bytes | None = None
    for version, (member_name, sha256) in MEMBERS.items():
        path = schema_path(version)
        if path.is_file() and sha256_of(path.read_bytes()) == sha256:
            continue
        data = data if data is not None else tarball(via)
        _write(path, member_bytes(data, member_name, sha256))
    return [schema_path(version) for version in MEMBERS]


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
        paths = fetch(args.via)
    except FetchError as error:
        print(f"fetch_asyncapi_schemas: the AsyncAPI JSON Schemas cannot be had: {error}", file=sys.stderr)
        return 1
    names = ", ".join(str(path.relative_to(ROOT)) for path in paths)
    print(f"fetch_asyncapi_schemas: {names} ({PACKAGE} {VERSION}) ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
