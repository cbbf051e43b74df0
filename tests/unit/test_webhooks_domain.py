"""Webhook rules without I/O: the URL and address policy, the signature and its check by a receiver, the
secrets of a rotation, and what a failed attempt means for the delivery and its endpoint."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest

from services.scheduling.webhook_domain import (
    IDEMPOTENCY_HEADER,
    MAX_ENDPOINTS_PER_SITE,
    MAX_URL_LENGTH,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    AttemptOutcome,
    FailurePolicy,
    address_refusal,
    endpoint_limit_refusal,
    judge_attempt,
    request_refusal,
    resolved_refusal,
    signature,
    signature_header,
    signature_matches,
    signing_secrets,
    unknown_kinds,
    url_refusal,
)

SECRET = "s3cret-s3cret-s3cret"
BODY = b'{"kind":"slot.confirmed"}'
KEY = "8f7e6d5c-4b3a-4928-8170-6f5e4d3c2b1a"
NOW = 1_700_000_000


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.org/cgt",
        "https://hooks.example.org:8443/cgt?site=1",
        "https://8.8.8.8/cgt",
        "https://[2606:4700::1111]/cgt",
    ],
)
def test_https_to_a_public_host_is_accepted(url: str) -> None:
    assert url_refusal(url, allow_loopback=False) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://hooks.example.org/cgt", "https"),
        ("ftp://hooks.example.org/cgt", "https"),
        ("https://user:pw@hooks.example.org/cgt", "credentials"),
        ("https:///cgt", "host"),
        ("https://hooks.example.org:99999/cgt", "valid URL"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("https://169.254.169.254/latest/meta-data/", "metadata"),
        ("https://[fd00:ec2::254]/latest/meta-data/", "metadata"),
        ("https://100.100.100.200/", "metadata"),
        ("https://192.0.0.192/", "metadata"),
        ("https://127.0.0.1/cgt", "loopback"),
        ("https://127.1/cgt", "loopback"),
        ("https://2130706433/cgt", "loopback"),
        ("https://0x7f.0.0.1/cgt", "loopback"),
        ("https://[::1]/cgt", "loopback"),
        ("https://[::ffff:127.0.0.1]/cgt", "loopback"),
        ("https://[::ffff:169.254.169.254]/cgt", "metadata"),
        ("https://[64:ff9b::a9fe:a9fe]/cgt", "metadata"),
        ("https://[2002:a9fe:a9fe::1]/cgt", "metadata"),
        ("https://localhost/cgt", "loopback"),
        ("https://api.localhost/cgt", "loopback"),
        ("https://10.0.0.8/cgt", "private"),
        ("https://172.16.4.4/cgt", "private"),
        ("https://192.168.1.10/cgt", "private"),
        ("https://[fd12::1]/cgt", "private"),
        ("https://169.254.10.10/cgt", "link-local"),
        ("https://[fe80::1]/cgt", "link-local"),
        ("https://0.0.0.0/cgt", "unspecified"),
        ("https://[::]/cgt", "unspecified"),
        ("https://224.0.0.1/cgt", "multicast"),
        ("https://[ff02::1]/cgt", "multicast"),
        ("https://100.64.0.1/cgt", "not public"),
        ("https://metadata/computeMetadata/v1/", "public host"),
        ("https://metadata.google.internal/computeMetadata/v1/", "public host"),
        ("https://printer.local/cgt", "public host"),
    ],
)
def test_a_url_to_anything_but_a_public_https_host_is_refused(url: str, reason: str) -> None:
    refusal = url_refusal(url, allow_loopback=False)
    assert refusal is not None and reason in refusal


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9000/cgt", "https://127.0.0.1/cgt", "http://[::1]:9000/", "http://localhost:9/"]
)
def test_development_allows_loopback_over_http(url: str) -> None:
    assert url_refusal(url, allow_loopback=True) is None
    assert url_refusal(url, allow_loopback=False) is not None


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.8/",
        "http://hooks.example.org/",
        "https://[fe80::1]/",
    ],
)
def test_development_still_refuses_private_metadata_and_plain_http_to_public_hosts(url: str) -> None:
    assert url_refusal(url, allow_loopback=True) is not None


def test_at_send_time_every_resolved_address_must_pass() -> None:
    public, private = ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("10.1.2.3")
    metadata = ipaddress.ip_address("169.254.169.254")
    assert resolved_refusal([public], scheme="https", allow_loopback=False) is None
    assert "private" in (resolved_refusal([public, private], scheme="https", allow_loopback=False) or "")
    assert "metadata" in (resolved_refusal([metadata], scheme="https", allow_loopback=True) or "")
    assert resolved_refusal([], scheme="https", allow_loopback=False) == "the host did not resolve"
    loopback = ipaddress.ip_address("127.0.0.1")
    assert resolved_refusal([loopback], scheme="http", allow_loopback=True) is None
    assert resolved_refusal([loopback], scheme="http", allow_loopback=False) is not None
    assert "http" in (resolved_refusal([public], scheme="http", allow_loopback=True) or "")
    assert address_refusal(ipaddress.ip_address("::ffff:10.0.0.1"), allow_loopback=True) is not None


def test_only_known_message_kinds_can_be_subscribed_to() -> None:
    assert unknown_kinds(["slot.confirmed", "slot.held"]) == []
    assert unknown_kinds(["slot.confirmed", "order.accepted", "x"]) == ["order.accepted", "x"]


def test_the_signature_covers_timestamp_idempotency_key_and_body() -> None:
    signed = signature(SECRET, NOW, KEY, BODY)
    assert signed.startswith("v2=") and len(signed) == 3 + 64
    assert signature_matches([SECRET], NOW, KEY, BODY, signed)
    assert not signature_matches([SECRET], NOW, KEY, BODY + b" ", signed)
    assert not signature_matches([SECRET], NOW + 1, KEY, BODY, signed)
    assert not signature_matches([SECRET], NOW, KEY[:-1] + "b", BODY, signed)
    assert not signature_matches(["another-secret-entirely"], NOW, KEY, BODY, signed)


def test_during_a_rotation_both_secrets_sign_and_either_verifies() -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    secrets = signing_secrets("new-secret-new-secret", SECRET, now + timedelta(hours=1), now)
    assert secrets == ["new-secret-new-secret", SECRET]
    header = signature_header(secrets, NOW, KEY, BODY)
    assert header.count("v2=") == 2 and ", " in header
    assert signature_matches([SECRET], NOW, KEY, BODY, header)
    assert signature_matches(["new-secret-new-secret"], NOW, KEY, BODY, header)
    assert signing_secrets("new-secret-new-secret", SECRET, now, now) == ["new-secret-new-secret"]
    assert signing_secrets("new-secret-new-secret", None, None, now) == ["new-secret-new-secret"]


def headers(timestamp: str, key: str = KEY, signed: str | None = None) -> dict[str, str]:
    if signed is None:
        signed = signature(SECRET, int(timestamp), key, BODY)
    return {
        TIMESTAMP_HEADER.lower(): timestamp,
        IDEMPOTENCY_HEADER.lower(): key,
        SIGNATURE_HEADER.lower(): signed,
    }


def test_a_receiver_takes_a_fresh_signed_request() -> None:
    assert request_refusal([SECRET], headers(str(NOW)), BODY, now=NOW + 10) is None


@pytest.mark.parametrize(
    "timestamp", ["", "abc", "1.5", "-1", "+1700000000", "1e9", "\u0661\u0667\u0660\u0660", "9" * 40]
)
def test_a_receiver_refuses_a_malformed_timestamp_with_400(timestamp: str) -> None:
    sent = {**headers(str(NOW)), TIMESTAMP_HEADER.lower(): timestamp}
    refusal = request_refusal([SECRET], sent, BODY, now=NOW)
    assert refusal is not None and refusal.status == 400 and TIMESTAMP_HEADER in refusal.reason


def test_a_receiver_refuses_a_stale_or_future_timestamp_with_400() -> None:
    for now in (NOW + 301, NOW - 301):
        refusal = request_refusal([SECRET], headers(str(NOW)), BODY, now=now)
        assert refusal is not None and refusal.status == 400 and "tolerance" in refusal.reason


def test_a_replay_with_a_new_key_fails_the_signature() -> None:
    original = headers(str(NOW))
    replay = {**original, IDEMPOTENCY_HEADER.lower(): "a-new-key-for-an-old-message"}
    refusal = request_refusal([SECRET], replay, BODY, now=NOW)
    assert refusal is not None and refusal.status == 401


def test_a_receiver_refuses_a_request_without_an_idempotency_key_with_400() -> None:
    sent = {k: v for k, v in headers(str(NOW)).items() if k != IDEMPOTENCY_HEADER.lower()}
    refusal = request_refusal([SECRET], sent, BODY, now=NOW)
    assert refusal is not None and refusal.status == 400 and IDEMPOTENCY_HEADER in refusal.reason


POLICY = FailurePolicy(max_attempts=8, disable_after_failures=5, backoff_base_seconds=2.0)


def test_a_success_resets_the_endpoints_count() -> None:
    decision = judge_attempt(
        succeeded=True, delivery_attempts=3, consecutive_failures=4, endpoint_active=True, policy=POLICY
    )
    assert decision.outcome is AttemptOutcome.DELIVERED and decision.consecutive_failures == 0


def test_a_failure_below_the_thresholds_is_retried_with_backoff() -> None:
    decision = judge_attempt(
        succeeded=False, delivery_attempts=2, consecutive_failures=2, endpoint_active=True, policy=POLICY
    )
    assert decision.outcome is AttemptOutcome.RETRY
    assert decision.consecutive_failures == 3 and decision.retry_in_seconds == 4.0


def test_the_failure_that_reaches_the_threshold_disables_the_endpoint() -> None:
    decision = judge_attempt(
        succeeded=False, delivery_attempts=1, consecutive_failures=4, endpoint_active=True, policy=POLICY
    )
    assert decision.outcome is AttemptOutcome.DISABLE_ENDPOINT and decision.consecutive_failures == 5


def test_disabling_wins_over_giving_up_the_message_when_both_are_due() -> None:
    policy = FailurePolicy(max_attempts=4, disable_after_failures=4, backoff_base_seconds=1.0)
    decision = judge_attempt(
        succeeded=False, delivery_attempts=4, consecutive_failures=3, endpoint_active=True, policy=policy
    )
    assert decision.outcome is AttemptOutcome.DISABLE_ENDPOINT


def test_a_message_that_runs_out_of_attempts_on_an_answering_endpoint_fails_alone() -> None:
    decision = judge_attempt(
        succeeded=False, delivery_attempts=8, consecutive_failures=1, endpoint_active=True, policy=POLICY
    )
    assert decision.outcome is AttemptOutcome.GIVE_UP and decision.consecutive_failures == 2


def test_an_endpoint_no_longer_active_is_disabled_no_second_time() -> None:
    decision = judge_attempt(
        succeeded=False, delivery_attempts=3, consecutive_failures=5, endpoint_active=False, policy=POLICY
    )
    assert decision.outcome is AttemptOutcome.SET_ASIDE and decision.consecutive_failures == 5


def test_a_threshold_above_the_attempts_of_one_message_is_refused() -> None:
    with pytest.raises(ValueError, match="disable_after_failures"):
        FailurePolicy(max_attempts=4, disable_after_failures=10, backoff_base_seconds=1.0)


def test_a_url_over_the_stated_length_is_refused_by_the_rule_itself() -> None:
    base = "https://hooks.tc-boston.example.org/"
    fits = base + "a" * (MAX_URL_LENGTH - len(base))
    assert url_refusal(fits, allow_loopback=False) is None
    assert url_refusal(fits + "a", allow_loopback=False) == f"may be at most {MAX_URL_LENGTH} characters"


def test_the_endpoint_limit_of_a_site() -> None:
    assert endpoint_limit_refusal(MAX_ENDPOINTS_PER_SITE - 1) is None
    assert endpoint_limit_refusal(MAX_ENDPOINTS_PER_SITE) is not None
