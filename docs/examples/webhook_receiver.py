"""A minimal receiver for switchboard's billing webhook: check the signature, keep each record once.

    WEBHOOK_SECRET='<the relay's webhook_secret>' \
        python webhook_receiver.py cert.pem key.pem 9443

It listens on https://127.0.0.1:9443 (any path) with the given certificate and key, and
appends each new record to received.jsonl. A real receiver would write to its billing
database instead, in one transaction with the record id it has seen.
"""

import hashlib
import hmac
import json
import os
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SECRET = os.environ["WEBHOOK_SECRET"]
RECORDS = Path("received.jsonl")
SEEN = Path("received-ids.txt")  # record ids already kept: deliveries are at least once


def verify(secret: str, body: bytes, header: str, tolerance: float = 300) -> bool:
    """Check 'Switchboard-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>'."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance:  # too old (or from the future): a replay
        return False
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(mac.hexdigest(), fields.get("v1", ""))


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))  # the raw bytes, as signed
        if not verify(SECRET, body, self.headers.get("switchboard-signature", "")):
            self.send_response(401)  # not from the relay: it is not retried as a success
            self.end_headers()
            return
        record_id = self.headers["idempotency-key"]
        seen = set(SEEN.read_text().split()) if SEEN.exists() else set()
        if record_id not in seen:  # a repeated delivery is acknowledged, not kept twice
            with RECORDS.open("a") as out:
                out.write(json.dumps(json.loads(body)) + "\n")
            with SEEN.open("a") as ids:
                ids.write(record_id + "\n")
        self.send_response(204)  # any 2xx: delivered; the relay stops retrying this record
        self.end_headers()


def main(cert: str, key: str, port: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", port), Receiver)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
