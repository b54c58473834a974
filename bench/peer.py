"""Peer transfer throughput against raw TCP over loopback, on the same bytes in the same run.

    .venv/bin/python bench/peer.py [--size 1G] [--chunk-mib 8] [--in-flight 4] [--repeat 3]

One file of random bytes is written into a holder's cache (the DISK tier's layout) and kept
in the page cache. (a) raw TCP: a server process sends it with `socket.sendfile`; this
process receives it into a 4 MiB buffer and writes it to a file. (b) pervade: one Dask worker
process serves it through PeerPlugin; this process pulls it with `pull` into a directory,
which includes asking for the load, the manifest and checking the sha256; and once more
with ``verify=False``, to show the transfer alone. Raw TCP is also run hashing what it
receives. Each is run `--repeat` times, in rotating order; the table gives the median.
Target: (b)/(a) >= 0.5.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from distributed import Client, LocalCluster

from pervade.worker.peer import PeerPlugin, WorkerRoots
from pervade.worker.peer_pull import MiB, pull

PIECE = 64 * MiB


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def make_holder(cache: Path, size: int) -> tuple[str, Path]:
    """Random bytes as one cache entry; the digest is their sha256."""
    staging = cache / "staging.bin"
    sha = hashlib.sha256()
    with open(staging, "wb") as f:
        left = size
        while left:
            piece = os.urandom(min(PIECE, left))
            sha.update(piece)
            f.write(piece)
            left -= len(piece)
    digest = sha.hexdigest()
    (cache / digest).mkdir()
    target = cache / digest / "data.bin"
    staging.rename(target)
    manifest = {
        "digest": digest,
        "kind": "file",
        "files": [{"path": "data.bin", "size": size, "sha256": digest}],
    }
    (cache / f"{digest}.json").write_text(json.dumps(manifest))
    return digest, target


def _serve(path: str, conn: mp.connection.Connection) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        conn.send(server.getsockname()[1])
        peer, _ = server.accept()
        with peer, open(path, "rb") as f:
            peer.sendfile(f)


def raw_tcp(path: Path, dest: Path, sha256: str | None = None) -> float:
    """Seconds to move `path` over one loopback TCP connection into `dest`.

    With `sha256`, the received bytes are also hashed as they arrive (in the same thread,
    as a plain program would) and checked.
    """
    hasher = hashlib.sha256() if sha256 else None
    parent, child = mp.Pipe()
    server = mp.get_context("fork").Process(target=_serve, args=(str(path), child))
    server.start()
    port = parent.recv()
    buf = bytearray(4 * MiB)
    view = memoryview(buf)
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            while n := s.recv_into(view):
                os.write(fd, view[:n])
                if hasher is not None:
                    hasher.update(view[:n])
        finally:
            os.close(fd)
    seconds = time.perf_counter() - start
    server.join()
    if dest.stat().st_size != path.stat().st_size:
        raise RuntimeError("raw TCP copy is incomplete")
    if hasher is not None and hasher.hexdigest() != sha256:
        raise RuntimeError("raw TCP copy has the wrong sha256")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1G", help="bytes to move, e.g. 256M, 1G (default)")
    parser.add_argument("--chunk-mib", type=int, default=8)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    size = parse_size(args.size)

    with tempfile.TemporaryDirectory(prefix="pervade-peer-bench-") as tmp:
        base = Path(tmp)
        (base / "caches" / "0").mkdir(parents=True)
        digest, source = make_holder(base / "caches" / "0", size)
        dest = base / "dest"
        raw: list[float] = []
        raw_sha: list[float] = []
        peer: list[float] = []
        peer_bare: list[float] = []
        with (
            LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster,
            Client(cluster) as client,
        ):
            client.wait_for_workers(1)
            client.register_plugin(PeerPlugin(WorkerRoots(base / "caches")))
            (address,) = client.scheduler_info()["workers"]

            def peer_pull(out: Path, verify: bool = True) -> float:
                stats = asyncio.run(
                    pull(
                        [address],
                        digest,
                        out,
                        chunk=args.chunk_mib * MiB,
                        in_flight=args.in_flight,
                        verify=verify,
                    )
                )
                return stats.seconds

            runs: list[tuple[list[float], Callable[[Path], float]]] = [
                (raw, lambda out: raw_tcp(source, out)),
                (raw_sha, lambda out: raw_tcp(source, out, sha256=digest)),
                (peer, peer_pull),
                (peer_bare, lambda out: peer_pull(out, verify=False)),
            ]
            for i in range(args.repeat):
                # Each run writes fresh files that are deleted right after it (their dirty
                # pages are dropped, never written back), and the order rotates, so no kind
                # pays for another's writeback.
                for times, run in runs[i % len(runs) :] + runs[: i % len(runs)]:
                    dest.mkdir()
                    times.append(run(dest / "out"))
                    shutil.rmtree(dest)

    raw_gbs = size / statistics.median(raw) / 1e9
    rows = [
        ("raw Python TCP (sendfile -> recv_into + write)", raw),
        ("raw Python TCP + sha256 of the received bytes", raw_sha),
        ("pervade peer pull (Dask comm, sha256 checked)", peer),
        ("pervade peer pull, sha256 skipped (verify=False)", peer_bare),
    ]
    cpu = platform.processor() or platform.machine()
    print(
        f"{size / 1e9:.2f} GB, {os.cpu_count()} CPUs ({cpu}), loopback,"
        f" chunk {args.chunk_mib} MiB, {args.in_flight} in flight, median of {args.repeat}"
    )
    print(f"| {'transfer':<48} | {'GB/s':>5} | {'vs raw':>6} |")
    print(f"| {'-' * 48} | {'-' * 5} | {'-' * 6} |")
    for label, runs in rows:
        gbs = size / statistics.median(runs) / 1e9
        print(f"| {label:<48} | {gbs:5.2f} | {gbs / raw_gbs:6.2f} |")
    for label, runs in rows:
        print(f"{label}: runs (s) {[round(t, 3) for t in runs]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
