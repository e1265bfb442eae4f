#!/usr/bin/env python3
"""A soak: `scripts/bench soak` runs this. BENCH_SOAK_JOBS (default 1,000,000) /bin/true
jobs through one supervisor (4 workers, SQLite) with `retention` keeping the newest
10,000 finished jobs; every BENCH_SOAK_STEP (default 100,000) finished jobs it prints the
rate over that step and the size of jobs.db (with its WAL), so that a store that grows or
a rate that sinks shows."""

import json
import os
import subprocess
import sys
import tempfile
import time

BIN = sys.argv[1]
N = int(os.environ.get("BENCH_SOAK_JOBS", "1000000"))
STEP = int(os.environ.get("BENCH_SOAK_STEP", "100000"))


def size(path):
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += os.path.getsize(path + suffix)
        except OSError:
            pass
    return total


def main():
    d = tempfile.mkdtemp(prefix="sv-soak-", dir=os.environ.get("BENCH_DIR", "/tmp"))
    try:
        conf = os.path.join(d, "supervisor.json")
        with open(conf, "w") as f:
            json.dump({"groups": [{"name": "g", "max_workers": 4}],
                       "events": {"rotate_bytes": 67108864, "keep": 2},
                       "retention": {"finished_max_count": 10000}}, f)
        jobs = os.path.join(d, "jobs.jsonl")
        with open(jobs, "w") as f:
            f.write((json.dumps({"command": ["/bin/true"], "group": "g"}) + "\n") * N)
        t = time.monotonic()
        subprocess.run([BIN, "submit", "-c", conf, "--file", jobs], check=True,
                       stdout=subprocess.DEVNULL)
        os.remove(jobs)
        db = os.path.join(d, "state", "jobs.db")
        print(f"soak: {N} /bin/true jobs, 4 workers, retention keeps the newest 10,000 "
              f"finished; submitted in {time.monotonic() - t:.1f} s; jobs.db then "
              f"{size(db) / 1e6:.1f} MB", flush=True)
        p = subprocess.Popen([BIN, "run", "-c", conf, "--until-empty"],
                             stderr=subprocess.DEVNULL)
        events = os.path.join(d, "state", "events.jsonl")
        done = 0
        mark, mark_t = 0, time.monotonic()
        seen = 0
        while p.poll() is None:
            time.sleep(1)
            # Count job_finished events incrementally across rotations: the supervisor
            # keeps seq; the count of finished jobs is what matters.
            out = subprocess.run([BIN, "status", "-c", conf, "--json"],
                                 capture_output=True)
            try:
                counts = json.loads(out.stdout)["jobs"]
                queued = counts.get("queued", 0) + counts.get("running", 0)
            except ValueError:
                continue
            done = N - queued
            if done - mark >= STEP:
                now = time.monotonic()
                print(f"  {done:>8} done: {(done - mark) / (now - mark_t):6.0f} jobs/s "
                      f"over the last {done - mark}; jobs.db {size(db) / 1e6:6.1f} MB",
                      flush=True)
                mark, mark_t = done, now
        print(f"  run --until-empty exited {p.returncode}; jobs.db at the end "
              f"{size(db) / 1e6:.1f} MB", flush=True)
    finally:
        subprocess.run(["rm", "-rf", d])


main()
