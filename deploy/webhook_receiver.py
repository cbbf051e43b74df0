"""A treatment center's webhook endpoint, as a reference: verifies the signature, de-duplicates on the
Idempotency-Key, prints each message. `python deploy/webhook_receiver.py --port 9000 --secret S`"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_SKEW_SECONDS = 300


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", required=True, help="the secret returned when the webhook was registered")
    args = parser.parse_args()
    seen: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            timestamp = self.headers.get("X-CGT-Timestamp", "0")
            expected = (
                "v1="
                + hmac.new(args.secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
            )
            fresh = abs(time.time() - int(timestamp)) <= MAX_SKEW_SECONDS
            if not (fresh and hmac.compare_digest(expected, self.headers.get("X-CGT-Signature", ""))):
                self.send_response(401)
                self.end_headers()
                print("refused: bad or stale signature", flush=True)
                return
            key = self.headers.get("Idempotency-Key", "")
            if key not in seen:
                seen.add(key)
                message = json.loads(body)
                print(
                    f"{message['kind']:<15} appointment {message['appointment_id']} COI {message['coi']} "
                    f"state {message['state']} conditioning {message['conditioning_start_on']} "
                    f"infusion {message['infusion_on']}",
                    flush=True,
                )
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    print(f"listening on http://127.0.0.1:{args.port}/", flush=True)
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
