"""The reference receiver (`deploy/webhook_receiver.py`) as a real HTTP server on loopback: it takes a
signed message once, answers a retry of it without taking it again, and refuses a replay with a new key,
a stale timestamp and a malformed one (which used to crash its handler) — and keeps serving afterwards."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from deploy.webhook_receiver import Receiver, make_server
from services.scheduling.webhook_domain import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature_header,
)

SECRET = "receiver-secret-0123456789"
PREVIOUS = "previous-secret-0123456789"
BODY = json.dumps({"kind": "slot.confirmed", "coi": "CHW4321260000014", "appointment_id": "a"}).encode()


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    lines: list[str] = []
    receiver = Receiver([SECRET], show=lines.append)
    server = make_server(receiver, 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield receiver, f"http://127.0.0.1:{server.server_address[1]}/cgt"
    finally:
        server.shutdown()
        server.server_close()


def signed(key: str, timestamp: int | None = None, secrets: list[str] | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "Content-Type": "application/json",
        IDEMPOTENCY_HEADER: key,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature_header(secrets or [SECRET], timestamp, key, BODY),
    }


def test_a_signed_message_is_taken_once_and_its_retry_is_answered_without_taking_it_again(
    receiver: tuple[Receiver, str],
) -> None:
    inbox, url = receiver
    first = httpx.post(url, content=BODY, headers=signed("delivery-1"))
    retry = httpx.post(url, content=BODY, headers=signed("delivery-1", int(time.time()) + 1))
    assert (first.status_code, retry.status_code) == (204, 204)
    assert len(inbox.taken) == 1 and inbox.taken[0]["kind"] == "slot.confirmed"


def test_a_replay_with_a_new_key_is_refused_by_the_signature(receiver: tuple[Receiver, str]) -> None:
    inbox, url = receiver
    original = signed("delivery-2")
    assert httpx.post(url, content=BODY, headers=original).status_code == 204
    replay = {**original, IDEMPOTENCY_HEADER: "delivery-2-replayed"}
    answer = httpx.post(url, content=BODY, headers=replay)
    assert answer.status_code == 401 and SIGNATURE_HEADER in answer.text
    assert len(inbox.taken) == 1


@pytest.mark.parametrize("timestamp", ["soon", "1.5e9", "", "-5", "17000000000000000000000"])
def test_a_malformed_timestamp_is_a_400_and_the_receiver_keeps_serving(
    receiver: tuple[Receiver, str], timestamp: str
) -> None:
    inbox, url = receiver
    malformed = {**signed("delivery-3"), TIMESTAMP_HEADER: timestamp}
    answer = httpx.post(url, content=BODY, headers=malformed)
    assert answer.status_code == 400 and TIMESTAMP_HEADER in answer.text
    assert httpx.post(url, content=BODY, headers=signed("delivery-4")).status_code == 204
    assert len(inbox.taken) == 1


def test_a_timestamp_outside_the_tolerance_is_a_400(receiver: tuple[Receiver, str]) -> None:
    inbox, url = receiver
    for skew in (-3600, 3600):
        stale = signed("delivery-5", int(time.time()) + skew)
        answer = httpx.post(url, content=BODY, headers=stale)
        assert answer.status_code == 400 and "tolerance" in answer.text
    assert inbox.taken == []


def test_during_a_rotation_a_receiver_with_either_secret_takes_the_message() -> None:
    both = signed("delivery-6", secrets=[SECRET, PREVIOUS])
    for secrets in ([SECRET], [PREVIOUS]):
        inbox = Receiver(secrets, show=lambda _line: None)
        assert inbox.receive(both, BODY) == (204, "taken")
    assert Receiver(["unrelated-secret-000000"], show=lambda _l: None).receive(both, BODY)[0] == 401


def test_a_key_is_forgotten_only_after_the_remembering_period() -> None:
    now = [time.time()]
    inbox = Receiver([SECRET], remember_seconds=600, clock=lambda: now[0], show=lambda _line: None)
    assert inbox.receive(signed("delivery-7", int(now[0])), BODY) == (204, "taken")
    now[0] += 200
    assert inbox.receive(signed("delivery-7", int(now[0])), BODY) == (204, "already taken")
    now[0] += 500
    assert inbox.receive(signed("delivery-7", int(now[0])), BODY) == (204, "taken")
