"""Security headers on every response of every service, errors included, set by `CorrelationMiddleware`
(services.common.logging) as it echoes the correlation id: one pass over each response's headers.

- `X-Content-Type-Options: nosniff`: a browser never guesses a JSON body to be HTML or script;
- `Cache-Control: no-store`: no proxy or browser keeps a copy of a response (every one is data, or an
  error about data); a route that set its own `Cache-Control` keeps it.
The `server` banner is not sent: uvicorn is started with `--no-server-header` everywhere.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders

SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


def add_security_headers(headers: MutableHeaders) -> None:
    for name, value in SECURITY_HEADERS.items():
        if name not in headers:
            headers[name] = value
