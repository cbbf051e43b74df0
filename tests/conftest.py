"""Process-wide test setup: the suite is a development run (CGT_DEV_MODE), with the published development
secrets, as the services of `make up` and the e2e stack are (deploy/stack.py); tests that write ledger
entries in process sign them with the DEV ledger key. tests/integration/test_development_secrets.py checks
the refusal outside that mode."""

from __future__ import annotations

import os

from deploy.stack import DEV_COURIER_VERIFY_KEYS, DEV_LEDGER_SIGNING_KEYS
from services.common.development import DEV_MODE_VARIABLE, DEV_WEBHOOK_SECRET_KEY

os.environ.setdefault(DEV_MODE_VARIABLE, "true")
os.environ.setdefault("WEBHOOK_SECRET_KEY", DEV_WEBHOOK_SECRET_KEY)
os.environ.setdefault("LEDGER_SIGNING_KEYS", DEV_LEDGER_SIGNING_KEYS)
os.environ.setdefault("COURIER_VERIFY_KEYS", DEV_COURIER_VERIFY_KEYS)
# Services built in process reach no broker (FastStream's TestKafkaBroker, or none): nothing to log in to.
# The stacks the e2e tests start give each service its own SASL principal (deploy/stack.py).
os.environ.setdefault("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
# The suite fires thousands of requests a minute from one address with a few tokens: generous budgets here;
# tests/integration/test_http_abuse.py checks the limits themselves with small ones.
os.environ.setdefault("RATE_LIMIT_PER_MINUTE", "1000000")
os.environ.setdefault("RATE_LIMIT_FAILED_AUTH_PER_MINUTE", "100000")
