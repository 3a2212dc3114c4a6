"""Random bytes for what each login needs unpredictable: md5 salts, SCRAM nonces, cancel keys.

They come from the operating system's CSPRNG (`os.urandom`), as `secrets.token_bytes` does, but
read a block at a time: under connection churn a getrandom system call per salt, nonce and key
was a measurable part of a login's cost. Bytes are handed out once, under a lock (SCRAM's
client side also runs in worker threads), and a forked worker starts with none, so no two
processes ever share a block.
"""

from __future__ import annotations

import os
import threading

__all__ = ["token_bytes"]

_BLOCK = 4096

_lock = threading.Lock()
_block = b""
_pos = 0


def token_bytes(n: int) -> bytes:
    """`n` bytes from the OS CSPRNG, never handed out before."""
    global _block, _pos
    with _lock:
        if _pos + n > len(_block):
            _block = os.urandom(max(_BLOCK, n))
            _pos = 0
        out = _block[_pos : _pos + n]
        _pos += n
    return out


def _forget() -> None:
    global _block, _pos
    _block = b""
    _pos = 0


# A child would otherwise hand out the same bytes as its parent and its siblings.
os.register_at_fork(after_in_child=_forget)
