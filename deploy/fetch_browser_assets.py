"""Fetch the JavaScript the browser tests inject into pages, from the npm registry.

`make install` runs this from the repository root: `python3 -m deploy.fetch_browser_assets
[--via auto|npm|https]`. Standard library only; the fetching and checking is deploy/npm_fetch.py's, shared
with deploy/fetch_epcis_schema.py and deploy/fetch_asyncapi_schemas.py.

The one asset today is `package/axe.min.js` of the npm package axe-core 4.14.1 (MPL-2.0; Deque's
accessibility engine): tests/browser/ injects it into a page and fails on every serious or critical
violation it reports. It is checked against its own pinned SHA-256 and lands in `.cache/axe/` (git-ignored);
the tarball is fetched only when the file is missing or stale. Exits 1 with the reason when it cannot be had.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

if not __package__:  # run as `python3 deploy/fetch_browser_assets.py`: make the `deploy` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy import npm_fetch
from deploy.npm_fetch import FetchError as FetchError  # `x as x`: re-exported for the tests
from deploy.npm_fetch import PinnedTarball

TOOL = "fetch_browser_assets"
ROOT = npm_fetch.ROOT
CACHE = ROOT / ".cache"


@dataclass(frozen=True)
class Asset:
    """One file out of one pinned npm tarball, with its own pinned SHA-256 and its place in `.cache/`."""

    tarball: PinnedTarball
    member: str
    sha256: str
    path: Path


AXE_VERSION = "4.14.1"
AXE_TARBALL = PinnedTarball(
    package="axe-core",
    version=AXE_VERSION,
    tarball_name=f"axe-core-{AXE_VERSION}.tgz",
    tarball_url=f"https://registry.npmjs.org/axe-core/-/axe-core-{AXE_VERSION}.tgz",
    sha256="e6b0ce02b84d892e2e33e403485e7f3d6c29e2be6df65daf44d89ba564139745",
    integrity=(
        "sha512-FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ=="
    ),
)
AXE = Asset(
    tarball=AXE_TARBALL,
    member="package/axe.min.js",
    sha256="29348999450cdf2849a8e70b7912fc2da85a849da39c0d0d5394f51d4a9ed95c",
    path=CACHE / "axe" / "axe.min.js",
)
"""tests/browser/accessibility.py injects this file."""

ASSETS: tuple[Asset, ...] = (AXE,)


def fetch_asset(asset: Asset, via: str = "auto") -> Path:
    """The asset in the cache, checked; its tarball is fetched only when the file is missing or stale."""
    if not npm_fetch.cached_ok(asset.path, asset.sha256):
        data = npm_fetch.tarball(asset.tarball, via, TOOL)
        npm_fetch.write_atomically(
            asset.path, npm_fetch.member_bytes(asset.tarball, data, asset.member, asset.sha256)
        )
    return asset.path


def fetch(via: str = "auto") -> list[Path]:
    return [fetch_asset(asset, via) for asset in ASSETS]


def main(argv: list[str] | None = None) -> int:
    return npm_fetch.run_main(
        argv,
        description=__doc__,
        tool_name=TOOL,
        fetch=fetch,
        what="the browser tests' assets",
        ok_message=lambda paths: (
            ", ".join(
                f"{path.relative_to(ROOT)} ({asset.tarball.spec})"
                for path, asset in zip(paths, ASSETS, strict=True)
            )
            + " ok"
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
