#!/usr/bin/env python3
"""Dispatch rate at queue depth: `scripts/bench depth` runs this.

For each store (SQLite; PostgreSQL too when SUPERVISOR_TEST_POSTGRES_URL is set), each
depth (BENCH_DEPTHS, default 1000,10000,100000) and each kind of job (tagged
`arch=x86_64`, matched by the first group; named: `"group": "g"`), it queues that many
`/bin/true` jobs with `submit --file`, then times `run --until-empty` on 4 workers, with
a second group that matches none of them. While it runs, a sampler reads the CPU time of
the supervisor, its grabber and its workers from /proc, so that the report shows where
the time goes (CPU per job, in µs, per process).

The floor, in the same invocation: the fastest of `seq N | xargs -P4 -I{} /bin/true`
and `spawn_floor` (N spawn+exec+wait of /bin/true on 4 threads with the project's own
spawner, nothing stored). Ours is reported as a fraction of it, with the whole machine's
CPU per job (from /proc/stat: every process, the jobs too) and how busy it was.

Then what the contract adds to every job, each part measured alone by
`examples/dispatch_parts` (a claim and an outcome stored; one message hop between two
processes, of the five a job takes: Claimed, Run, JobStarted, JobEnded, Grant), and the
best rate that leaves on this machine's cores: the floor's CPU per job plus those parts,
with every core busy and nothing else spent.

And the design's skeleton (`examples/dispatch_skeleton`), the best the design card's
shape allows here: a supervisor process with a hub thread and one crossbeam queue, a
grabber that stores each outcome with the next claim on the real SQLite store, and 4
worker processes that spawn each job with its own log, five messages a job, two events
file lines, and nothing else (no heartbeat, writer thread, timeout, cancel, journal).
Three ways: whole; with a store that hands out jobs from a counter (`nostore`); with
neither store, logs nor events file (`hops`). Ours on SQLite is reported against the
whole skeleton too: what the rest of the system costs.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BIN = sys.argv[1]
FLOOR_BIN = sys.argv[2]
PARTS_BIN = sys.argv[3]
SKELETON_BIN = sys.argv[4]
HOPS = 5  # Claimed, Run, JobStarted, JobEnded, Grant
DEPTHS = [int(x) for x in os.environ.get("BENCH_DEPTHS", "1000,10000,100000").split(",")]
KINDS = os.environ.get("BENCH_KINDS", "tagged,named").split(",")
FLOOR_N = int(os.environ.get("BENCH_FLOOR_JOBS", "10000"))
TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pid):
    """utime + stime of one process, in seconds, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / TICK
    except (OSError, IndexError, ValueError):
        return None


def machine_cpu():
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is counted in user already
    return (total - idle) / TICK, total / TICK


def children_of(pid):
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return out


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Sampler(threading.Thread):
    """The last CPU time seen of the supervisor and of each of its children."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.last = {}
        self.roles = {}
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(0.05)

    def sample(self):
        c = cpu_of(self.pid)
        if c is not None:
            self.last[self.pid] = c
            self.roles[self.pid] = "supervisor"
        for child in children_of(self.pid):
            c = cpu_of(child)
            if c is None:
                continue
            if child not in self.roles:
                line = cmdline(child)
                if "Grabber" in line or "grabber" in line:
                    self.roles[child] = "grabber"
                elif "Worker" in line or "worker" in line:
                    self.roles[child] = "worker"
                else:
                    continue
            self.last[child] = c

    def by_role(self):
        out = {}
        for pid, cpu in self.last.items():
            role = self.roles[pid]
            out.setdefault(role, []).append(cpu)
        return out


def write_config(path, store):
    cfg = {
        "groups": [
            {"name": "g", "max_workers": 4, "match": {"arch": ["x86_64"]}},
            {"name": "other", "max_workers": 1, "match": {"arch": ["ppc64le"]}},
        ],
        "grabber": {"poll_interval_s": 1},
        "events": {"rotate_bytes": 1073741824},
    }
    if store:
        cfg["store"] = store
    with open(path, "w") as f:
        json.dump(cfg, f)


def one_run(work, n, kind, store):
    d = tempfile.mkdtemp(dir=work)
    conf = os.path.join(d, "supervisor.json")
    write_config(conf, store)
    job = {"command": ["/bin/true"]}
    if kind == "tagged":
        job["tags"] = {"arch": "x86_64"}
    else:
        job["group"] = "g"
    line = json.dumps(job) + "\n"
    jobs = os.path.join(d, "jobs.jsonl")
    with open(jobs, "w") as f:
        f.write(line * n)
    subprocess.run([BIN, "submit", "-c", conf, "--file", jobs], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["sync"])
    busy0, all0 = machine_cpu()
    t0 = time.monotonic()
    with open(os.path.join(d, "run.err"), "w") as err:
        p = subprocess.Popen([BIN, "run", "-c", conf, "--until-empty"], stderr=err)
        s = Sampler(p.pid)
        s.start()
        code = p.wait()
        s.stop.set()
    t1 = time.monotonic()
    busy1, all1 = machine_cpu()
    machine = ((busy1 - busy0) / n * 1e6, (busy1 - busy0) / max(all1 - all0, 1e-9))
    if code != 0:
        raise SystemExit(f"run --until-empty exited {code}; see {d}/run.err")
    out = subprocess.run([BIN, "status", "-c", conf, "--json"], check=True,
                         capture_output=True).stdout
    ok = json.loads(out)["jobs"]["succeeded"]
    if ok != n:
        raise SystemExit(f"only {ok} of {n} jobs succeeded ({d})")
    roles = s.by_role()
    per_job = {r: sum(v) / n * 1e6 for r, v in roles.items()}
    worker_each = [round(x / n * 1e6) for x in roles.get("worker", [])]
    return n / (t1 - t0), per_job, worker_each, machine


def floor(work):
    t0 = time.monotonic()
    subprocess.run(f"seq {FLOOR_N} | xargs -P4 -I{{}} /bin/true", shell=True, check=True)
    xargs = FLOOR_N / (time.monotonic() - t0)
    out = subprocess.run([FLOOR_BIN, str(FLOOR_N), "4"], check=True,
                         capture_output=True, text=True).stdout
    spawner = float(out.split()[0])
    spawner_cpu = float(out.split("; ")[1].split()[0])
    return xargs, spawner, spawner_cpu


def parts():
    """CPU µs per job of a claim and an outcome stored, and of one message hop."""
    def run(*args):
        out = subprocess.run([PARTS_BIN, *args], check=True, capture_output=True,
                             text=True).stdout
        return [float(line.split(": ")[1].split()[0]) for line in out.splitlines()]
    # As the grabber stores them: each outcome with the next claim (the last line).
    store = run("store", str(FLOOR_N))[-1]
    # A hop's cost depends on where the scheduler puts the two sides (one core, or two
    # with a wake-up across): the median of three runs.
    hop = statistics.median(run("ipc", str(2 * FLOOR_N))[0] for _ in range(3))
    return store, hop


def skeleton():
    """jobs/s and CPU µs per job of the skeleton, each way: the median rate of 3 runs."""
    out = {}
    for way in ("full", "nostore", "hops"):
        runs = []
        for _ in range(3):
            line = subprocess.run([SKELETON_BIN, str(FLOOR_N), "4", way], check=True,
                                  capture_output=True, text=True).stdout
            runs.append((float(line.split()[0]), float(line.split("; ")[1].split()[0])))
        out[way] = sorted(runs)[1]
    return out


def postgres_part(url):
    """CPU µs per job of a claim and an outcome on PostgreSQL, the server's included: the
    whole machine's, from /proc/stat (the server runs here too)."""
    db = "depth_parts"
    for sql in (f"DROP DATABASE IF EXISTS {db}", f"CREATE DATABASE {db}"):
        subprocess.run(["psql", "-q", url, "-c", sql], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    busy0, _ = machine_cpu()
    subprocess.run([PARTS_BIN, "store", str(FLOOR_N), db_url(url, db)], check=True,
                   stdout=subprocess.DEVNULL)
    busy1, _ = machine_cpu()
    # Its submit of FLOOR_N jobs is counted too: a batch insert, a small share.
    return (busy1 - busy0) / FLOOR_N * 1e6


def db_url(url, db):
    """`url` with its database replaced by `db` (a key=value string, or a URL naming
    the database `postgres`, as scripts/with-postgres makes them)."""
    if "://" not in url:
        return url + f" dbname={db}"  # a later key wins
    if "/postgres?" not in url:
        raise SystemExit(f"cannot name another database in {url!r}: expected /postgres?")
    return url.replace("/postgres?", f"/{db}?", 1)


def main():
    stores = [("sqlite", None)]
    url = os.environ.get("SUPERVISOR_TEST_POSTGRES_URL")
    work = tempfile.mkdtemp(prefix="sv-depth-", dir=os.environ.get("BENCH_DIR", "/tmp"))
    try:
        xargs, spawner, spawner_cpu = floor(work)
        best = max(xargs, spawner)
        store_cpu, hop_cpu = parts()
        cores = os.cpu_count()
        print(f"depth: /bin/true jobs on 4 workers, a second group matching none of them")
        print(f"  floor: xargs -P4 -I{{}} /bin/true {xargs:.0f} jobs/s; "
              f"spawn_floor (our spawner, 4 threads, nothing stored) {spawner:.0f} jobs/s, "
              f"{spawner_cpu:.0f} µs CPU per job")
        least = spawner_cpu + store_cpu + HOPS * hop_cpu
        print(f"  what the contract adds to each job, alone: a claim and an outcome stored "
              f"{store_cpu:.0f} µs, {HOPS} message hops x {hop_cpu:.0f} µs; with the "
              f"floor's {spawner_cpu:.0f} µs, {least:.0f} µs of CPU per job: at best "
              f"{cores * 1e6 / least:.0f} jobs/s on {cores} cores = "
              f"{cores * 1e6 / least / best:.2f} of the floor (0.8 of it allows "
              f"{cores * 1e6 / (0.8 * best):.0f} µs)", flush=True)
        skel = skeleton()
        print("  the design's skeleton (median of 3): " + "; ".join(
            f"{way} {rate:.0f} jobs/s = {rate / best:.2f} of the floor, {cpu:.0f} µs CPU "
            f"per job" for way, (rate, cpu) in skel.items()), flush=True)
        if url:
            pg = postgres_part(url)
            least_pg = spawner_cpu + pg + HOPS * hop_cpu
            print(f"  on PostgreSQL (its server on this machine), a claim and an outcome cost "
                  f"{pg:.0f} µs of the machine's CPU: at best {cores * 1e6 / least_pg:.0f} "
                  f"jobs/s = {cores * 1e6 / least_pg / best:.2f} of the floor", flush=True)
        rows = []
        for name, store in stores + ([("postgres", url)] if url else []):
            for kind in KINDS:
                for n in DEPTHS:
                    st = store
                    if name == "postgres":
                        db = f"depth_{kind}_{n}"
                        subprocess.run(["psql", "-q", url, "-c", f"DROP DATABASE IF EXISTS {db}"],
                                       check=True, stdout=subprocess.DEVNULL)
                        subprocess.run(["psql", "-q", url, "-c", f"CREATE DATABASE {db}"],
                                       check=True, stdout=subprocess.DEVNULL)
                        st = {"postgres": {"url": db_url(url, db)}}
                    rate, per_job, workers, (machine, busy) = one_run(work, n, kind, st)
                    rows.append((name, kind, n, rate, per_job, workers))
                    cpu = ", ".join(f"{r} {v:.0f}" for r, v in sorted(per_job.items()))
                    print(f"  {name:8} {kind:6} {n:>7} queued: {rate:7.0f} jobs/s "
                          f"= {rate / best:.2f} of the floor, {rate / skel['full'][0]:.2f} of "
                          f"the skeleton; CPU µs/job: {cpu} "
                          f"(each worker: {workers}); machine {machine:.0f} µs/job, "
                          f"{busy:.0%} busy", flush=True)
        for name in {r[0] for r in rows}:
            for kind in KINDS:
                rs = {r[2]: r[3] for r in rows if r[0] == name and r[1] == kind}
                if len(rs) > 1:
                    lo = min(rs)
                    print(f"  {name} {kind}: " + ", ".join(
                        f"{n} queued {rs[n] / rs[lo]:.2f}x" for n in sorted(rs)) +
                        f" the rate at {lo}")
    finally:
        subprocess.run(["rm", "-rf", work])


main()
