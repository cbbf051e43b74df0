"""Fetch htmx, the one script the coordinator console's pages load, from the npm registry.

`make install` runs this from the repository root: `python3 -m deploy.fetch_console_assets [--via ...]`.
Standard library only, like the schema fetchers; the fetching and checking is deploy/npm_fetch.py's.

The file is `package/dist/htmx.min.js` of the npm package htmx.org 2.0.4 (0BSD), checked against its own
pinned SHA-256; it lands in `.cache/console/` (git-ignored) and the console serves it at
`/static/htmx.min.js`. The pages work without it (a plain reload link). Exits 1 when it cannot be had.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as `python3 deploy/fetch_console_assets.py`: make the `deploy` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy import npm_fetch
from deploy.npm_fetch import PinnedTarball

PACKAGE = "htmx.org"
VERSION = "2.0.4"
TARBALL_NAME = f"{PACKAGE}-{VERSION}.tgz"
PINNED = PinnedTarball(
    PACKAGE,
    VERSION,
    TARBALL_NAME,
    f"https://registry.npmjs.org/{PACKAGE}/-/{TARBALL_NAME}",
    "a34988d1b9f005a458d593aa8d7486537cb878b8ac3b82703db1268983123ecc",
    "sha512-HLxMCdfXDOJirs3vBZl/ZLoY+c7PfM4Ahr2Ad4YXh6d22T5ltbTXFFkpx9Tgb2vvmWFMbIc3LqN2ToNkZJvyYQ==",
)
MEMBER = "package/dist/htmx.min.js"
HTMX_SHA256 = "e209dda5c8235479f3166defc7750e1dbcd5a5c1808b7792fc2e6733768fb447"

TOOL = "fetch_console_assets"
ROOT = npm_fetch.ROOT
HTMX_PATH = ROOT / ".cache" / "console" / "htmx.min.js"
"""Where services/console/app.py HTMX_PATH looks (a unit test holds the two together)."""


def fetch(via: str = "auto") -> Path:
    """htmx in the cache, checked; fetched only when missing or not matching its checksum."""
    if not npm_fetch.cached_ok(HTMX_PATH, HTMX_SHA256):
        data = npm_fetch.tarball(PINNED, via, TOOL)
        npm_fetch.write_atomically(HTMX_PATH, npm_fetch.member_bytes(PINNED, data, MEMBER, HTMX_SHA256))
    return HTMX_PATH


def main(argv: list[str] | None = None) -> int:
    return npm_fetch.run_main(
        argv,
        description=__doc__,
        tool_name=TOOL,
        fetch=fetch,
        what="htmx",
        ok_message=lambda path: f"{path.relative_to(ROOT)} (htmx {VERSION}, sha256 {HTMX_SHA256[:12]}…) ok",
    )


if __name__ == "__main__":
    raise SystemExit(main())
