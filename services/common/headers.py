"""Security headers on every response of every service, errors included (plain ASGI, no body buffering).

- `X-Content-Type-Options: nosniff`: a browser never guesses a JSON body to be HTML or script;
- `Cache-Control: no-store`: no proxy or browser keeps a copy of a response (every one is data, or an
  error about data); a route that set its own `Cache-Control` keeps it.
The `server` banner is not sent: uvicorn is started with `--no-server-header` everywhere.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
