#!/usr/bin/env python3
"""A writer workload for redis-py's RedisCluster: the Python twin of src/workload.rs.

It proves DESIGN.md's migration guarantee for another cluster client: every acknowledged write
is readable afterwards with its last value. The key space is partitioned across W writer
threads (key i belongs to writer i % W, each writer runs one command at a time), so each key's
expected state is exact. Writers do a steady random mix of SET (string keys; the value names
the key and a sequence number), INCR (counter keys), GET (checked against the model, also
during a migration), DEL and, with --expire, EXPIRE with a long TTL.

Protocol with the harness (src/python.rs): after the prefill it prints the line `ready` on
stdout. On SIGTERM (or after --seconds) it stops the writers, reads every key back through a
fresh client, and prints one line of JSON (the report) on stdout. Progress goes to stderr.
Exit code 0 when it could produce a report, whatever the report says; the harness judges it.

Key names are the same as the Rust workload's: `{prefix}:{<tag>}:s<i>` (or `:n<i>` for
counters, every fourth key), where <tag> is the smallest number whose text hashes to slot
i * 7919 % 16384, so the keys cover every slot and a few thousand spread over all nodes.
"""

import argparse
import json
import random
import signal
import sys
import threading
import time

from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisError, ResponseError

SLOTS = 16384
LONG_TTL_SECS = 100_000
EXAMPLES = 20
KINDS = ["GET", "SET", "INCR", "DEL", "EXPIRE"]
W_GET, W_WRITE, W_DEL, W_EXPIRE = 40, 40, 12, 8


def log(*args):
    print("workload.py:", *args, file=sys.stderr, flush=True)


def slot_tags():
    tags = [None] * SLOTS
    missing = SLOTS
    n = 0
    while missing:
        text = str(n)
        slot = key_slot(text.encode())
        if tags[slot] is None:
            tags[slot] = text
            missing -= 1
        n += 1
    return tags


TAGS = slot_tags()


def is_counter(i):
    return i % 4 == 3


def key_name(prefix, i):
    kind = "n" if is_counter(i) else "s"
    return f"{prefix}:{{{TAGS[(i * 7919) % SLOTS]}}}:{kind}{i}"


# A state is None (absent), ("s", text) or ("n", int).
def show(state):
    if state is None:
        return "(absent)"
    return repr(state[1]) if state[0] == "s" else str(state[1])


def incremented(state):
    if state is None:
        return ("n", 1)
    if state[0] == "n":
        return ("n", state[1] + 1)
    return None


def parse(i, raw):
    if raw is None:
        return None
    if is_counter(i):
        try:
            return ("n", int(raw))
        except ValueError:
            return ("s", raw)
    return ("s", raw)


class KeyModel:
    """Every state the key may be in (one after an acknowledged command; more after a write
    whose outcome the client could not learn), and whether it has a TTL."""

    __slots__ = ("possible", "ttl")

    def __init__(self, state=None, ttl="none"):
        self.possible = [state]
        self.ttl = ttl

    def add(self, state):
        if state not in self.possible:
            self.possible.append(state)

    def expected(self):
        return " or ".join(show(p) for p in self.possible)


def error_class(e):
    name = type(e).__name__
    if type(e) is ResponseError:
        word = str(e).split(" ", 1)[0]
        return word or name
    return name


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.ops = {k: 0 for k in KINDS}
        self.errors = {}
        self.error_examples = []
        self.wrong = 0
        self.wrong_examples = []
        self.reapplied = 0
        self.max_latency = 0.0

    def at(self):
        return f"{time.monotonic() - self.started:.3f}s"

    def op(self, kind, latency):
        with self.lock:
            self.ops[kind] += 1
            self.max_latency = max(self.max_latency, latency)

    def error(self, kind, key, e):
        with self.lock:
            c = error_class(e)
            self.errors[c] = self.errors.get(c, 0) + 1
            if len(self.error_examples) < EXAMPLES:
                self.error_examples.append(f"at {self.at()}: {kind} {key}: {type(e).__name__}: {e}")

    def wrong_read(self, what):
        with self.lock:
            self.wrong += 1
            if len(self.wrong_examples) < EXAMPLES:
                self.wrong_examples.append(f"at {self.at()}: {what}")


def client(nodes, timeout):
    startup = [ClusterNode(h, int(p)) for h, p in (n.rsplit(":", 1) for n in nodes)]
    return RedisCluster(
        startup_nodes=startup,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=2,
    )


class Writer(threading.Thread):
    def __init__(self, w, args, model, stats, stop):
        super().__init__(name=f"writer-{w}", daemon=True)
        self.args = args
        self.own = list(range(w, args.keys, args.writers))
        self.model = model
        self.stats = stats
        self.stop = stop
        self.rng = random.Random(args.seed * 1_000_003 + w)
        self.seq = 0
        self.rc = client(args.nodes, args.timeout)

    def run(self):
        period = self.args.writers / self.args.rate if self.args.rate > 0 else 0.0
        next_at = time.monotonic()
        while not self.stop.is_set():
            if period:
                now = time.monotonic()
                if next_at > now:
                    time.sleep(next_at - now)
                next_at = max(next_at + period, time.monotonic() - period)
            self.step()
        self.rc.close()

    def step(self):
        a = self.args
        i = self.rng.choice(self.own)
        key = key_name(a.prefix, i)
        m = self.model[i]
        total = W_GET + W_WRITE + W_DEL + (W_EXPIRE if a.expire else 0)
        pick = self.rng.randrange(total)
        self.seq += 1
        st = self.stats
        t0 = time.monotonic()
        if pick < W_GET:
            kind = "GET"
            try:
                raw = self.rc.get(key)
            except RedisError as e:
                st.op(kind, time.monotonic() - t0)
                st.error(kind, key, e)
                return
            st.op(kind, time.monotonic() - t0)
            read = parse(i, raw)
            if read not in m.possible:
                st.wrong_read(f"GET {key} read {show(read)}, expected {m.expected()}")
            m.possible = [read]
        elif pick < W_GET + W_WRITE and not is_counter(i):
            kind = "SET"
            value = f"{key}#{self.seq}"
            try:
                self.rc.set(key, value)
            except RedisError as e:
                st.op(kind, time.monotonic() - t0)
                st.error(kind, key, e)
                m.add(("s", value))
                m.ttl = "unknown"
                return
            st.op(kind, time.monotonic() - t0)
            m.possible = [("s", value)]
            m.ttl = "none"
        elif pick < W_GET + W_WRITE:
            kind = "INCR"
            try:
                n = self.rc.incr(key)
            except RedisError as e:
                st.op(kind, time.monotonic() - t0)
                st.error(kind, key, e)
                for nxt in [incremented(p) for p in m.possible]:
                    if nxt is not None:
                        m.add(nxt)
                return
            st.op(kind, time.monotonic() - t0)
            expected = [x for x in (incremented(p) for p in m.possible) if x is not None]
            if ("n", n) not in expected:
                above = any((p is None and n > 1) or (p is not None and p[0] == "n" and n > p[1] + 1) for p in m.possible)
                if a.tolerate_client_resends and above:
                    with st.lock:
                        st.reapplied += 1
                else:
                    st.wrong_read(f"INCR {key} answered {n}, expected {' or '.join(show(x) for x in expected)}")
            if len(m.possible) > 1:
                m.ttl = "unknown"
            m.possible = [("n", n)]
        elif pick < W_GET + W_WRITE + W_DEL:
            kind = "DEL"
            try:
                n = self.rc.delete(key)
            except RedisError as e:
                st.op(kind, time.monotonic() - t0)
                st.error(kind, key, e)
                m.add(None)
                m.ttl = "unknown"
                return
            st.op(kind, time.monotonic() - t0)
            existed = n > 0
            if not any((p is not None) == existed for p in m.possible):
                if not existed and a.tolerate_client_resends:
                    with st.lock:
                        st.reapplied += 1
                else:
                    what = "deleted a key" if existed else "found no key"
                    st.wrong_read(f"DEL {key} {what}, expected {m.expected()}")
            m.possible = [None]
            m.ttl = "none"
        else:
            kind = "EXPIRE"
            try:
                ok = self.rc.expire(key, LONG_TTL_SECS)
            except RedisError as e:
                st.op(kind, time.monotonic() - t0)
                st.error(kind, key, e)
                m.ttl = "unknown"
                return
            st.op(kind, time.monotonic() - t0)
            existed = bool(ok)
            if not any((p is not None) == existed for p in m.possible):
                what = "found the key" if existed else "found no key"
                st.wrong_read(f"EXPIRE {key} {what}, expected {m.expected()}")
            if existed:
                m.possible = [p for p in m.possible if p is not None] or [None]
                m.ttl = "set"
            else:
                m.possible = [None]
                m.ttl = "none"


def prefill(args, model):
    rc = client(args.nodes, args.timeout)
    rng = random.Random(args.seed)
    t0 = time.monotonic()
    for start in range(0, args.keys, 1000):
        pipe = rc.pipeline()
        states = []
        for i in range(start, min(start + 1000, args.keys)):
            key = key_name(args.prefix, i)
            state = ("n", rng.randrange(1000)) if is_counter(i) else ("s", f"{key}#0")
            pipe.set(key, state[1])
            states.append((i, state))
        pipe.execute()
        for i, state in states:
            model[i] = KeyModel(state)
    rc.close()
    log(f"prefilled {args.keys} keys in {time.monotonic() - t0:.1f}s")


def verify(args, model):
    rc = client(args.nodes, args.timeout)
    report = {
        "keys_checked": 0,
        "mismatches": 0,
        "ttl_mismatches": 0,
        "examples": [],
        "live_keys": 0,
        "uncertain_keys": sum(1 for m in model if len(m.possible) > 1),
    }
    for start in range(0, args.keys, 1000):
        idx = list(range(start, min(start + 1000, args.keys)))
        pipe = rc.pipeline()
        for i in idx:
            pipe.get(key_name(args.prefix, i))
            if args.expire:
                pipe.ttl(key_name(args.prefix, i))
        res = pipe.execute()
        step = 2 if args.expire else 1
        for n, i in enumerate(idx):
            key = key_name(args.prefix, i)
            m = model[i]
            read = parse(i, res[n * step])
            report["keys_checked"] += 1
            if read not in m.possible:
                report["mismatches"] += 1
                if len(report["examples"]) < EXAMPLES:
                    report["examples"].append(f"{key}: read {show(read)}, expected {m.expected()}")
            else:
                m.possible = [read]
            if read is not None:
                report["live_keys"] += 1
            if args.expire:
                ttl = res[n * step + 1]
                if read is None:
                    ok = ttl == -2
                elif m.ttl == "none":
                    ok = ttl == -1
                elif m.ttl == "set":
                    ok = ttl > 0
                else:
                    ok = ttl == -1 or ttl > 0
                if not ok:
                    report["ttl_mismatches"] += 1
                    if len(report["examples"]) < EXAMPLES:
                        report["examples"].append(f"{key}: TTL {ttl}, model says {m.ttl} (value {show(read)})")
    rc.close()
    return report


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", required=True, help="comma-separated host:port of cluster proxies")
    p.add_argument("--keys", type=int, default=50_000)
    p.add_argument("--writers", type=int, default=4)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--seconds", type=float, default=0, help="stop after this long (0: only on SIGTERM)")
    p.add_argument("--rate", type=float, default=1000, help="commands/s over all writers (0: unlimited)")
    p.add_argument("--prefix", default="py")
    p.add_argument("--expire", action="store_true")
    p.add_argument("--no-prefill", dest="prefill", action="store_false")
    p.add_argument("--tolerate-client-resends", action="store_true")
    p.add_argument("--timeout", type=float, default=10.0, help="per-command socket timeout")
    args = p.parse_args()
    args.nodes = [n for n in args.nodes.split(",") if n]
    if args.seed is None:
        args.seed = random.randrange(2**63)
    log(f"{args.keys} keys, {args.writers} writers, rate {args.rate}/s, seed {args.seed}")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    model = [KeyModel() for _ in range(args.keys)]
    if args.prefill:
        prefill(args, model)
    stats = Stats()
    writers = [Writer(w, args, model, stats, stop) for w in range(args.writers)]
    for w in writers:
        w.start()
    print("ready", flush=True)

    deadline = time.monotonic() + args.seconds if args.seconds > 0 else None
    while not stop.is_set():
        if deadline is not None and time.monotonic() >= deadline:
            break
        stop.wait(0.1)
    stop.set()
    for w in writers:
        w.join()
    elapsed = time.monotonic() - stats.started
    report = {
        "seed": args.seed,
        "elapsed": elapsed,
        "ops": stats.ops,
        "errors": stats.errors,
        "error_examples": stats.error_examples,
        "wrong_reads": stats.wrong,
        "wrong_read_examples": stats.wrong_examples,
        "client_resends": stats.reapplied,
        "uncertain_keys": sum(1 for m in model if len(m.possible) > 1),
        "max_latency_ms": stats.max_latency * 1000,
    }
    log(f"stopped after {elapsed:.1f}s, {sum(stats.ops.values())} commands; verifying")
    try:
        report["verify"] = verify(args, model)
    except RedisError as e:
        report["verify_error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
