"""A local stand-in for AWS STS GetCallerIdentity, served over HTTP on 127.0.0.1:0.

moto's server does not answer presigned GET requests, so this checks SigV4 query signatures
itself, with an implementation written from the AWS specification (independent of botocore,
which signs the tokens under test): canonical request, string to sign, derived key.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote, urlsplit

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _enc(value: str) -> str:
    return quote(value, safe="-_.~")


def sigv4_query_signature(
    secret: str, method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str]
) -> str:
    """The SigV4 signature of a presigned request (query without X-Amz-Signature)."""
    params = dict(query)
    signed = params["X-Amz-SignedHeaders"].split(";")
    canonical_query = "&".join(f"{_enc(k)}={_enc(v)}" for k, v in sorted(query))
    canonical_headers = "".join(f"{h}:{' '.join(headers[h].split())}\n" for h in signed)
    canonical = "\n".join(
        [method, path, canonical_query, canonical_headers, ";".join(signed), _EMPTY_SHA256]
    )
    _akid, date, region, service, term = params["X-Amz-Credential"].split("/")
    scope = f"{date}/{region}/{service}/{term}"
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            params["X-Amz-Date"],
            scope,
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, term):
        key = hmac.digest(key, part.encode(), "sha256")
    return hmac.new(key, to_sign.encode(), "sha256").hexdigest()


_OK = (
    '<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
    "<GetCallerIdentityResult><Arn>{arn}</Arn><UserId>AIDAFAKE</UserId>"
    "<Account>123456789012</Account></GetCallerIdentityResult>"
    "<ResponseMetadata><RequestId>fake</RequestId></ResponseMetadata>"
    "</GetCallerIdentityResponse>"
)
_ERR = (
    '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
    "<Code>{code}</Code><Message>{code}</Message></Error><RequestId>fake</RequestId>"
    "</ErrorResponse>"
)


class FakeSts:
    """`keys` maps access key id -> (secret key, ARN). `calls` counts requests served."""

    def __init__(self, keys: dict[str, tuple[str, str]]) -> None:
        self.keys = keys
        self.calls = 0
        self.seen_urls: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.calls += 1
                status, body = fake.answer(
                    self.path, {k.lower(): v for k, v in self.headers.items()}
                )
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def answer(self, path: str, headers: dict[str, str]) -> tuple[int, str]:
        parts = urlsplit(path)
        query = parse_qsl(parts.query, keep_blank_values=True)
        params = dict(query)
        if params.get("Action") != "GetCallerIdentity" or "X-Amz-Signature" not in params:
            return 400, _ERR.format(code="InvalidAction")
        sig = params["X-Amz-Signature"]
        unsigned = [(k, v) for k, v in query if k != "X-Amz-Signature"]
        akid = params["X-Amz-Credential"].split("/")[0]
        if akid not in self.keys:
            return 403, _ERR.format(code="InvalidClientTokenId")
        secret, arn = self.keys[akid]
        for h in params["X-Amz-SignedHeaders"].split(";"):
            if h not in headers:
                return 403, _ERR.format(code="SignatureDoesNotMatch")
        expected = sigv4_query_signature(secret, "GET", parts.path or "/", unsigned, headers)
        if not hmac.compare_digest(expected, sig):
            return 403, _ERR.format(code="SignatureDoesNotMatch")
        signed_at = calendar.timegm(time.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
        if time.time() > signed_at + int(params["X-Amz-Expires"]):
            return 403, _ERR.format(code="RequestExpired")
        return 200, _OK.format(arn=arn)

    def start(self) -> FakeSts:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(10)
