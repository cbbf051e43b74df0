"""Process-wide test setup: tests that write ledger entries in process sign them with the DEV ledger key,
as the services of `make up` and the e2e stack do (deploy/stack.py)."""

from __future__ import annotations

import os

from deploy.stack import DEV_COURIER_VERIFY_KEYS, DEV_LEDGER_SIGNING_KEYS

os.environ.setdefault("LEDGER_SIGNING_KEYS", DEV_LEDGER_SIGNING_KEYS)
os.environ.setdefault("COURIER_VERIFY_KEYS", DEV_COURIER_VERIFY_KEYS)
# Services built in process reach no broker (FastStream's TestKafkaBroker, or none): nothing to log in to.
# The stacks the e2e tests start give each service its own SASL principal (deploy/stack.py).
os.environ.setdefault("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
# The suite fires thousands of requests a minute from one address with a few tokens: generous budgets here;
# tests/integration/test_http_abuse.py checks the limits themselves with small ones.
os.environ.setdefault("RATE_LIMIT_PER_MINUTE", "1000000")
os.environ.setdefault("RATE_LIMIT_FAILED_AUTH_PER_MINUTE", "100000")
