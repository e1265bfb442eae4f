#!/usr/bin/env python3
"""The cost of the HTTP server: `scripts/bench http` runs this.

1. Dispatch with dashboards watching. N (BENCH_HTTP_JOBS, default 10000) tagged
   `/bin/true` jobs queued behind a paused group, a supervisor on 4 workers with the
   server on; the clock starts at `POST /api/groups/g/resume` and stops at the N-th
   `job_finished` in the events file (read as it grows). Rounds alternate between no client at all
   and 10 dashboards (each an SSE stream of every event, read by `curl -N`, and the
   page's refresh: `/api/status` and `/api/jobs?limit=100` every 2 s) plus a Prometheus
   scrape of `/metrics` every second. The clients run at nice 19: real dashboards run
   in browsers elsewhere, and their own CPU is not the server's cost. BENCH_ROUNDS pairs (default 3); the median ratio
   of the two rates is the cost.
2. Idle wake-ups. The supervisor's voluntary context switches (all its threads) over
   BENCH_IDLE_S (default 30) idle seconds with 8 workers: without the server, with it,
   and with it and one dashboard's event stream open. The server's cost is the
   difference, per second.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

BIN = sys.argv[1]
N = int(os.environ.get("BENCH_HTTP_JOBS", "10000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
IDLE_S = float(os.environ.get("BENCH_IDLE_S", "30"))
TOKEN = "bench-token"


def wait_for(what, cond, within=60):
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


def setup(dir, http, workers=4):
    os.makedirs(dir)
    with open(f"{dir}/token", "w") as f:
        f.write(TOKEN)
    config = {
        "groups": [
            {"name": "g", "max_workers": workers, "match": {"arch": ["x86_64"]}},
            {"name": "other", "max_workers": 1, "match": {"arch": ["s390x"]}},
        ]
    }
    if http:
        config["http"] = {"listen": "127.0.0.1:0", "token_file": "token"}
    with open(f"{dir}/supervisor.json", "w") as f:
        json.dump(config, f)
    return f"{dir}/supervisor.json"


def addr_of(dir):
    path = f"{dir}/state/http.addr"
    wait_for(path, lambda: os.path.exists(path) and open(path).read().endswith("\n"))
    return "http://" + open(path).read().strip()


def call(base, method, path):
    req = urllib.request.Request(base + path, method=method, data=b"" if method == "POST" else None)
    req.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read()


def events_ready(dir, n):
    try:
        with open(f"{dir}/state/events.jsonl") as f:
            return sum('"child_ready"' in l for l in f) >= n
    except OSError:
        return False


# What 10 dashboards and a Prometheus ask besides their event streams, in a process of
# its own at the lowest priority (as are the streams' readers): dashboards run in
# browsers elsewhere, so their own CPU is not the server's cost.
POLLER = """
import sys, time, urllib.request
base, dashboards, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def get(path):
    req = urllib.request.Request(base + path)
    req.add_header("Authorization", "Bearer " + token)
    urllib.request.urlopen(req, timeout=30).read()
tick = 0
while True:
    time.sleep(1.0)
    get("/metrics")
    if tick % 2 == 0:
        for _ in range(dashboards):
            get("/api/status")
            get("/api/jobs?limit=100")
    tick += 1
"""


def dispatch_round(work, i, dashboards):
    dir = f"{work}/d{i}-{dashboards}"
    config = setup(dir, http=True)
    with open(f"{dir}/jobs.jsonl", "w") as f:
        for _ in range(N):
            f.write('{"command": ["/bin/true"], "tags": {"arch": "x86_64"}}\n')
    subprocess.run([BIN, "pause", "-c", config, "g"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([BIN, "submit", "-c", config, "--file", f"{dir}/jobs.jsonl"], check=True,
                   stdout=subprocess.DEVNULL)
    sv = subprocess.Popen([BIN, "run", "-c", config],
                          stdout=subprocess.DEVNULL, stderr=open(f"{dir}/run.err", "w"))
    base = addr_of(dir)
    wait_for("workers", lambda: events_ready(dir, 5 + 1))
    streams = [subprocess.Popen(["nice", "-n", "19", "curl", "-s", "-N",
                                 f"{base}/api/events?after=0"],
                                stdout=subprocess.DEVNULL) for _ in range(dashboards)]
    if dashboards:
        streams.append(subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", POLLER,
                                         base, str(dashboards), TOKEN]))
    events = open(f"{dir}/state/events.jsonl")
    events.read()
    t0 = time.monotonic()
    call(base, "POST", "/api/groups/g/resume")
    finished, rest = 0, ""
    while finished < N:
        if sv.poll() is not None:
            raise SystemExit(f"run exited {sv.returncode}: {open(f'{dir}/run.err').read()}")
        chunk = events.read()
        if not chunk:
            time.sleep(0.02)
            continue
        lines = (rest + chunk).split("\n")
        rest = lines.pop()
        finished += sum('"job_finished"' in l for l in lines)
    elapsed = time.monotonic() - t0
    sv.terminate()
    code = sv.wait()
    for s in streams:
        s.kill()
        s.wait()
    if code != 0:
        raise SystemExit(f"run exited {code}: {open(f'{dir}/run.err').read()}")
    return N / elapsed


def voluntary_switches(pid):
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def idle_round(work, name, http, stream):
    dir = f"{work}/idle-{name}"
    config = setup(dir, http=http, workers=8)
    sv = subprocess.Popen([BIN, "run", "-c", config], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    client = None
    try:
        wait_for("workers", lambda: events_ready(dir, 8 + 1 + 1))
        if stream:
            client = subprocess.Popen(["curl", "-s", "-N", f"{addr_of(dir)}/api/events"],
                                      stdout=subprocess.DEVNULL)
        time.sleep(1)  # let start-up settle before counting
        v0 = voluntary_switches(sv.pid)
        time.sleep(IDLE_S)
        v1 = voluntary_switches(sv.pid)
        return (v1 - v0) / IDLE_S
    finally:
        if client:
            client.kill()
            client.wait()
        sv.terminate()
        sv.wait()


def main():
    work = tempfile.mkdtemp(prefix="sv-bench-http-", dir=os.environ.get("BENCH_DIR", "/tmp"))
    try:
        rows = []
        for i in range(ROUNDS):
            alone = dispatch_round(work, i, 0)
            watched = dispatch_round(work, i, 10)
            rows.append((alone, watched))
            print(f"  round {i + 1}: no client {alone:.0f} jobs/s, 10 dashboards + scrape "
                  f"{watched:.0f} jobs/s", flush=True)
        ratios = [w / a for a, w in rows]
        print(f"http: dispatch of {N} tagged /bin/true jobs, 4 workers, server on")
        print(f"  10 dashboards (SSE of every event, status and jobs every 2 s) and /metrics "
              f"every 1 s, vs no client: ratio median {statistics.median(ratios):.3f} "
              f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)}); a drop of "
              f"{(1 - statistics.median(ratios)) * 100:.1f}%")
        base = idle_round(work, "off", False, False)
        on = idle_round(work, "on", True, False)
        watched = idle_round(work, "stream", True, True)
        print(f"http: idle supervisor, 8 workers, {IDLE_S:.0f} s: voluntary context switches "
              f"of all its threads per second")
        print(f"  server off {base:.2f}/s, on {on:.2f}/s, on with one event stream open "
              f"{watched:.2f}/s: the server adds {on - base:.2f}/s idle, "
              f"{watched - base:.2f}/s with a dashboard open")
    finally:
        subprocess.run(["rm", "-rf", work])


main()
