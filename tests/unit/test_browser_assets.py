"""axe-core, which the browser tests inject, is the pinned file `make install` fetched from npm."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy import fetch_browser_assets, npm_fetch
from tests.support import browser

ROOT = Path(__file__).resolve().parents[2]


def test_axe_is_the_pinned_file_in_the_cache_and_the_browser_tests_inject_that_one() -> None:
    assert fetch_browser_assets.fetch() == [ROOT / ".cache" / "axe" / "axe.min.js"]  # cached: no fetch
    assert fetch_browser_assets.AXE.path == browser.AXE_JS
    assert npm_fetch.cached_ok(browser.AXE_JS, fetch_browser_assets.AXE.sha256)
    assert fetch_browser_assets.AXE_TARBALL.spec == "axe-core@4.14.1"


def test_a_tarball_or_a_file_that_is_not_the_pinned_one_is_refused() -> None:
    pinned = fetch_browser_assets.AXE_TARBALL
    with pytest.raises(fetch_browser_assets.FetchError, match=r"sha256 [0-9a-f]{64} is not the pinned"):
        npm_fetch.check_tarball(pinned, b"not the tarball", "test")
    data = npm_fetch.tarball(pinned, "auto", "test")  # the cached one, checked
    with pytest.raises(
        fetch_browser_assets.FetchError, match=r"package/axe.min.js: sha256 [0-9a-f]{64} is not the pinned"
    ):
        npm_fetch.member_bytes(pinned, data, "package/axe.min.js", "0" * 64)
