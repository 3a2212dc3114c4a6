"""auth.entropy: login secrets read from the OS CSPRNG a block at a time, never handed out twice,
not even across a fork."""

from __future__ import annotations

import os
import threading

from pgpool_proxy.auth import entropy


def test_bytes_are_never_handed_out_twice_across_blocks() -> None:
    seen: set[bytes] = set()
    total = 0
    for n in (4, 7, 18, 4096, 5000, 1):  # sizes of salts, keys, nonces, and past a block
        for _ in range(600):
            b = entropy.token_bytes(n)
            assert len(b) == n
            total += n
            if n >= 7:  # shorter ones may repeat by chance; 7 bytes repeating is a bug
                assert b not in seen
                seen.add(b)
    assert total > 3 * 4096


def test_threads_get_distinct_bytes() -> None:
    out: list[bytes] = []
    lock = threading.Lock()

    def draw() -> None:
        mine = [entropy.token_bytes(16) for _ in range(500)]
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == len(out) == 2000


def test_a_forked_worker_does_not_repeat_its_parents_bytes() -> None:
    entropy.token_bytes(16)  # the parent holds a block with bytes left in it
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, entropy.token_bytes(16))
        finally:
            os._exit(0)
    os.close(w)
    child = os.read(r, 16)
    os.close(r)
    os.waitpid(pid, 0)
    assert len(child) == 16
    assert child != entropy.token_bytes(16)
