"""Helper process for the memory test: open N authenticated client connections and hold them.

    python -m bench.idle_clients --host H --port P --user U --db D --count N

The password comes from $BENCH_IDLE_PASSWORD. Each connection sends a StartupMessage, answers
cleartext or md5 authentication and waits for ReadyForQuery, then stays idle. When every
connection is either ready or failed, one JSON line {"ok": n, "failed": m, "error": "..."} goes
to stdout; the process then holds the connections until its stdin is closed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import struct
import sys

_PROTOCOL_3 = 196608


def _startup(user: str, db: str) -> bytes:
    params = b""
    for key, value in (("user", user), ("database", db), ("application_name", "bench-idle")):
        params += key.encode() + b"\0" + value.encode() + b"\0"
    body = struct.pack("!I", _PROTOCOL_3) + params + b"\0"
    return struct.pack("!I", len(body) + 4) + body


def _password_message(secret: str) -> bytes:
    data = secret.encode() + b"\0"
    return b"p" + struct.pack("!I", len(data) + 4) + data


def _md5_response(user: str, password: str, salt: bytes) -> str:
    # PostgreSQL's md5 password exchange: "md5" + md5(md5(password + user) + salt).
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()


async def _login(host: str, port: int, user: str, password: str, db: str) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(_startup(user, db))
        while True:
            header = await reader.readexactly(5)
            kind, length = header[:1], struct.unpack("!I", header[1:])[0]
            body = await reader.readexactly(length - 4)
            if kind == b"R":
                code = struct.unpack("!I", body[:4])[0]
                if code == 3:
                    writer.write(_password_message(password))
                elif code == 5:
                    writer.write(_password_message(_md5_response(user, password, body[4:8])))
                elif code != 0:
                    raise RuntimeError(f"unsupported authentication request {code}")
            elif kind == b"E":
                fields = [f[1:].decode(errors="replace") for f in body.split(b"\0") if f]
                raise RuntimeError("server error: " + " / ".join(fields[:4]))
            elif kind == b"Z":
                return writer
    except BaseException:
        writer.close()
        raise


async def _main(args: argparse.Namespace) -> int:
    password = os.environ.get("BENCH_IDLE_PASSWORD", "")
    sem = asyncio.Semaphore(args.concurrency)
    writers: list[asyncio.StreamWriter] = []
    errors: list[str] = []

    async def one() -> None:
        async with sem:
            try:
                w = await asyncio.wait_for(
                    _login(args.host, args.port, args.user, password, args.db), args.timeout
                )
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            else:
                writers.append(w)

    await asyncio.gather(*(one() for _ in range(args.count)))
    report = {"ok": len(writers), "failed": len(errors), "error": errors[0] if errors else ""}
    print(json.dumps(report), flush=True)
    # Hold the connections until the parent closes our stdin.
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    for w in writers:
        w.close()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args()
    try:
        import uvloop

        result: int = uvloop.run(_main(args))
        return result
    except ImportError:
        return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
