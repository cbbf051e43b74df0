"""Console page render times: the p50/p99 of the worklist and a case page, as a signed-in coordinator's
browser would ask for them, against a real stack holding the demo's data.

By default it starts its own stack on temporary SQLite databases (a broker, the three services, the
console as `make up` runs them), runs `make demo`'s three journeys and takes `--cases` more cases as far
as their product's pick-up (each one on the worklist) to populate it, signs in as the
development coordinator and asks for each page `--requests` times, one at a time after `--warmup`
discarded requests. `--running` uses `make up`'s stack (ports 8001-8004) instead, the demo run against it
first. Prints one JSON report and a line per page. Not timing-gated: the issue wants well under a second.

    .venv/bin/python -m deploy.bench_console [--requests 200] [--running]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from deploy import demo
from deploy.observe import EventLog
from deploy.stack import (
    CONSOLE_PORT,
    DEFAULT_PORTS,
    ROOT,
    Stack,
    console_process,
    make_up_kafka,
    sqlite_urls,
)
from services.common.kafka_access import KafkaAccess
from services.common.topics import ORDERS, SCHEDULING, SHIPMENTS

sys.path.insert(0, str(ROOT / "deploy" / "kafka"))
from kafka_local import LocalKafka  # type: ignore[import-not-found]

COORDINATOR_TOKEN = "dev-coordinator-token"
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def sign_in(http: httpx.AsyncClient) -> None:
    """As a browser does: the form (and its sign-in cookie), then the token posted with its CSRF token."""
    form = await http.get("/sign-in")
    form.raise_for_status()
    match = CSRF_INPUT.search(form.text)
    assert match is not None, "no CSRF token on the sign-in form"
    signed = await http.post("/sign-in", data={"csrf_token": match.group(1), "token": COORDINATOR_TOKEN})
    if signed.status_code != 303:
        raise RuntimeError(f"sign-in refused: {signed.status_code} {signed.text[:200]}")


async def time_page(http: httpx.AsyncClient, path: str, requests: int, warmup: int) -> dict[str, Any]:
    samples: list[float] = []
    for n in range(warmup + requests):
        started = time.perf_counter()
        response = await http.get(path)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise RuntimeError(f"{path}: {response.status_code} {response.text[:200]}")
        if n >= warmup:
            samples.append(elapsed)
    return {
        "path": path,
        "requests": requests,
        "bytes": len(response.content),
        "p50_ms": round(statistics.median(samples), 1),
        "p99_ms": round(percentile(samples, 0.99), 1),
        "max_ms": round(max(samples), 1),
    }


async def bench(urls: dict[str, str], console_url: str, kafka: KafkaAccess, args: argparse.Namespace) -> int:
    with contextlib.redirect_stdout(io.StringIO()):  # the demo's timelines: not this report's
        populated = await demo.run(urls, kafka)
    if populated != 0:
        print("the demo did not complete: no figures", file=sys.stderr)
        return 1
    await dispatched_cases(urls, kafka, args.cases)
    async with httpx.AsyncClient(base_url=console_url, timeout=30.0) as http:
        await sign_in(http)
        async with httpx.AsyncClient(timeout=30.0) as services:
            appointments = await services.get(f"{urls['scheduling']}/appointments", headers=demo.COORDINATOR)
            confirmed = [a["coi"] for a in appointments.json() if a["state"] in ("confirmed", "infused")]
            worklist = await services.get(f"{urls['scheduling']}/worklist", headers=demo.COORDINATOR)
        coi = confirmed[0]
        pages = [
            await time_page(http, "/worklist", args.requests, args.warmup),
            await time_page(http, f"/cases/{coi}", args.requests, args.warmup),
        ]
    report = {"worklist_items": len(worklist.json()), "case": coi, "pages": pages}
    print(json.dumps(report, indent=2))
    for page in pages:
        print(f"{page['path']:<32} p50 {page['p50_ms']:>7.1f} ms   p99 {page['p99_ms']:>7.1f} ms")
    return 0


async def dispatched_cases(urls: dict[str, str], kafka: KafkaAccess, count: int) -> None:
    """`count` more cases at TC-BOSTON taken as far as the pick-up of their product (the demo's steps):
    each is on the worklist (options to book, or a case to look at when no option fits)."""
    events = EventLog(kafka, [ORDERS, SHIPMENTS, SCHEDULING])
    await events.start()
    try:
        async with httpx.AsyncClient(timeout=30.0) as http:

            async def one(n: int) -> None:
                coi, order_url = await demo.place_order(http, urls)
                await demo.collect_and_manufacture(http, order_url, events, coi)
                await demo.release_and_ship(http, urls, order_url, events, coi, f"LOT-BENCH-{n:04d}")

            for start in range(0, count, 5):
                await asyncio.gather(*(one(n) for n in range(start, min(count, start + 5))))
    finally:
        await events.stop()


@contextlib.contextmanager
def own_stack() -> Iterator[tuple[dict[str, str], str, KafkaAccess]]:
    with (
        tempfile.TemporaryDirectory(prefix="cgt-bench-console-") as tmp,
        LocalKafka(data_dir=Path(tmp) / "kafka") as broker,
    ):
        stack = Stack(
            kafka=broker,
            database_urls=sqlite_urls(Path(tmp) / "db"),
            workdir=Path(tmp) / "logs",
            extra_env={"LOG_LEVEL": "WARNING", "OUTBOX_POLL_SECONDS": "0.2"},
        )
        console = console_process(stack)
        console.env["LOG_LEVEL"] = "WARNING"
        try:
            stack.start()
            console.start()
            console.wait_ready()
            yield {n: s.url for n, s in stack.services.items()}, console.url, broker.access()
        finally:
            console.stop()
            stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200, help="measured requests per page")
    parser.add_argument("--warmup", type=int, default=20, help="requests per page done and discarded first")
    parser.add_argument(
        "--cases", type=int, default=20, help="cases added to the demo's, to fill the worklist"
    )
    parser.add_argument("--running", action="store_true", help="use make up's stack (ports 8001-8004)")
    args = parser.parse_args(argv)
    if args.running:
        urls = {name: f"http://127.0.0.1:{port}" for name, port in DEFAULT_PORTS.items()}
        return asyncio.run(bench(urls, f"http://127.0.0.1:{CONSOLE_PORT}", make_up_kafka(), args))
    with own_stack() as (urls, console_url, kafka):
        return asyncio.run(bench(urls, console_url, kafka, args))


if __name__ == "__main__":
    raise SystemExit(main())
