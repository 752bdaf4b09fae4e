"""What one client can cost the UI: memory held after oversized queries, and a login's wait during a guessing attack.

    python benchmarks/bench_ui_limits.py [--queries 60] [--query-mb 10] [--attackers 8]

Serves a small generated index (the test kit's) with the default 10 MB upload limit, in this process, then:
- sends --queries text queries of --query-mb MB each (one session each), waits 20 s, returns freed heap to the
  system (malloc_trim) and reports the growth of the resident set; and counts the containers that still hold one
  of the queries (what the sessions keep);
- starts --attackers connections that post wrong passwords from 127.0.0.1 without pause and, 5 s later, times one
  right login from 127.0.0.2.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def resident_mb() -> int:
    line = next(l for l in open("/proc/self/status") if l.startswith("VmRSS"))
    return int(line.split()[1]) // 1024


def serve(searcher, **options):
    from search_testkit import free_port
    from ui import app as ui_app

    port = free_port()
    return ui_app.launch(searcher, port=port, block=False, quiet=True, **options), f"http://127.0.0.1:{port}"


def oversized_queries(searcher, count: int, megabytes: int) -> dict[str, int]:
    app, base = serve(searcher, max_file_size="10mb")
    query = "a red circle " * (megabytes * 1_000_000 // 13)
    statuses = set()
    with httpx.Client(base_url=base, timeout=300) as client:
        gc.collect()
        before = resident_mb()
        for number in range(count):
            body = {"data": [query, 3, False], "fn_index": 0, "session_hash": f"bench-{number}"}
            statuses.add(client.post("/gradio_api/queue/join", json=body).status_code)
            client.get("/gradio_api/queue/data", params={"session_hash": f"bench-{number}"})
    time.sleep(20)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    holding = sum(1 for o in gc.get_objects() if isinstance(o, dict)
                  and any(isinstance(v, str) and len(v) == len(query) for v in o.values()))
    app.close()
    return {"statuses": sorted(statuses), "rss_growth_mb": resident_mb() - before, "sessions_holding": holding}


def login_under_attack(searcher, attackers: int) -> float:
    app, base = serve(searcher, auth=("alice", "s3cret"))
    stop = threading.Event()

    def guess() -> None:
        with httpx.Client(timeout=300) as client:
            while not stop.is_set():
                client.post(f"{base}/login", data={"username": "alice", "password": "guess"})

    threads = [threading.Thread(target=guess, daemon=True) for _ in range(attackers)]
    for thread in threads:
        thread.start()
    time.sleep(5)
    started = time.monotonic()
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=300) as client:
        assert client.post(f"{base}/login", data={"username": "alice", "password": "s3cret"}).status_code == 200
    waited = time.monotonic() - started
    stop.set()
    app.close()
    return waited


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--query-mb", type=int, default=10)
    parser.add_argument("--attackers", type=int, default=8)
    args = parser.parse_args()
    from mammut_search.search import Searcher
    from search_testkit import build_test_index

    index, _ = build_test_index(Path(tempfile.mkdtemp()), readable_captions=True)
    searcher = Searcher.open(index, device="cpu")
    memory = oversized_queries(searcher, args.queries, args.query_mb)
    print(f"{args.queries} queries of {args.query_mb} MB: HTTP {memory['statuses']}, resident set "
          f"+{memory['rss_growth_mb']} MB after 20 s idle, {memory['sessions_holding']} sessions holding a query")
    print(f"right login from another address during {args.attackers} guessing connections: "
          f"{login_under_attack(searcher, args.attackers):.2f} s")


if __name__ == "__main__":
    main()
