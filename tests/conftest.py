"""Process-wide test setup: tests that write ledger entries in process sign them with the DEV ledger key,
as the services of `make up` and the e2e stack do (deploy/stack.py)."""

from __future__ import annotations

import os

from deploy.stack import DEV_LEDGER_SIGNING_KEYS

os.environ.setdefault("LEDGER_SIGNING_KEYS", DEV_LEDGER_SIGNING_KEYS)
