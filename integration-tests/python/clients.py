#!/usr/bin/env python3
"""Client compatibility rounds: one real cluster client does its normal work against sluice.

Used by integration-tests/tests/clients.rs while a slot migration is in flight. The client
connects through its own cluster support (topology from CLUSTER SLOTS/SHARDS/NODES, MOVED
followed by the client itself) and runs rounds until SIGTERM. A round is a realistic mix, each
answer checked:

  SET/GET on single keys, MSET/MGET through the client's own splitting by slot, INCRBY,
  a hash (HSET/HINCRBY/HGETALL), a list (RPUSH/LRANGE/LPOP), a sorted set (ZADD/ZINCRBY/
  ZRANGE WITHSCORES), a queue (BLPOP), a Lua script, a non-transactional pipeline
  across slots, a transaction on one slot (where the client supports it in cluster mode),
  EXPIRE/TTL, SCAN across the cluster (the client's own iteration over all nodes), and
  DEL/EXISTS across slots.

Keys are spread over all slots, and some of every kind are placed in the slots that move
(--moving), so every round crosses the migration. Output, one line each:

  ready                                        connected, first PING answered
  {"round": n, "ops": k, "seconds": s, ...}    a round passed
  {"error": "..."}                             the first failure; the exit status is then 1
  {"summary": {...}}                           after SIGTERM, once the round in progress passed

Clients: redis-py (redis.cluster.RedisCluster), redis-py-async (redis.asyncio.cluster.
RedisCluster), glide (valkey-glide GlideClusterClient), coredis (coredis.RedisCluster).
"""

import argparse
import asyncio
import json
import signal
import sys
import time
import traceback

from redis.crc import key_slot

# Per round: plain string keys (and as many again placed in the moving slots), counters,
# pipeline keys.
STRING_KEYS = 32
MOVING_KEYS = 12
COUNTERS = 8
PIPELINE_KEYS = 24
TTL = 1000
SCRIPT = "return {KEYS[1], ARGV[1], redis.call('INCRBY', KEYS[1], ARGV[1])}"


def log(msg):
    print(f"clients.py: {msg}", file=sys.stderr, flush=True)


def out(obj):
    print(obj if isinstance(obj, str) else json.dumps(obj), flush=True)


def text(v):
    """Answers as str (glide answers bytes; the others decode)."""
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, list):
        return [text(x) for x in v]
    if isinstance(v, tuple):
        return [text(x) for x in v]
    if isinstance(v, dict):
        return {text(k): text(x) for k, x in v.items()}
    return v


class Failure(Exception):
    """A wrong answer."""


def expect(what, got, want):
    if got != want:
        raise Failure(f"{what}: got {got!r}, expected {want!r}")


# ---------------------------------------------------------------------------------------------
# One adapter per client library: the same operations, each through the library's own
# cluster API (its splitting, its pipelines, its scan).


class RedisPySync:
    name = "redis-py"
    transactions = False  # redis-py 5's cluster pipeline has no MULTI

    async def connect(self, nodes):
        self.scripts = {}
        from redis.cluster import ClusterNode, RedisCluster

        startup = [ClusterNode(h, p) for h, p in nodes]
        self.c = RedisCluster(startup_nodes=startup, decode_responses=True, socket_timeout=10)
        return self.c.ping()

    async def set(self, k, v):
        return self.c.set(k, v)

    async def get(self, k):
        return self.c.get(k)

    async def incrby(self, k, n):
        return self.c.incrby(k, n)

    async def mset(self, mapping):
        return all(self.c.mset_nonatomic(mapping))

    async def mget(self, keys):
        return self.c.mget_nonatomic(keys)

    async def hset(self, k, mapping):
        return self.c.hset(k, mapping=mapping)

    async def hincrby(self, k, f, n):
        return self.c.hincrby(k, f, n)

    async def hgetall(self, k):
        return self.c.hgetall(k)

    async def rpush(self, k, items):
        return self.c.rpush(k, *items)

    async def lrange(self, k):
        return self.c.lrange(k, 0, -1)

    async def lpop(self, k):
        return self.c.lpop(k)

    async def expire(self, k, s):
        return self.c.expire(k, s)

    async def ttl(self, k):
        return self.c.ttl(k)

    async def delete(self, keys):
        return self.c.delete(*keys)

    async def exists(self, keys):
        return self.c.exists(*keys)

    async def zadd(self, k, mapping):
        return self.c.zadd(k, mapping)

    async def zincrby(self, k, member, n):
        return self.c.zincrby(k, n, member)

    async def zrange_withscores(self, k):
        return [list(x) for x in self.c.zrange(k, 0, -1, withscores=True)]

    async def blpop(self, keys, timeout):
        r = self.c.blpop(keys, timeout)
        return list(r) if r else None

    async def script(self, code, keys, args):
        if code not in self.scripts:
            self.scripts[code] = self.c.register_script(code)
        return self.scripts[code](keys=keys, args=args)

    async def pipeline(self, cmds):
        p = self.c.pipeline()
        for op, *args in cmds:
            getattr(p, op)(*args)
        return p.execute()

    async def scan(self, match):
        return list(self.c.scan_iter(match=match, count=200))

    async def close(self):
        self.c.close()


class RedisPyAsync:
    name = "redis-py-async"
    transactions = False

    async def connect(self, nodes):
        self.scripts = {}
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        startup = [ClusterNode(h, p) for h, p in nodes]
        self.c = RedisCluster(startup_nodes=startup, decode_responses=True, socket_timeout=10)
        await self.c.initialize()
        return await self.c.ping()

    async def set(self, k, v):
        return await self.c.set(k, v)

    async def get(self, k):
        return await self.c.get(k)

    async def incrby(self, k, n):
        return await self.c.incrby(k, n)

    async def mset(self, mapping):
        return all(await self.c.mset_nonatomic(mapping))

    async def mget(self, keys):
        return await self.c.mget_nonatomic(keys)

    async def hset(self, k, mapping):
        return await self.c.hset(k, mapping=mapping)

    async def hincrby(self, k, f, n):
        return await self.c.hincrby(k, f, n)

    async def hgetall(self, k):
        return await self.c.hgetall(k)

    async def rpush(self, k, items):
        return await self.c.rpush(k, *items)

    async def lrange(self, k):
        return await self.c.lrange(k, 0, -1)

    async def lpop(self, k):
        return await self.c.lpop(k)

    async def expire(self, k, s):
        return await self.c.expire(k, s)

    async def ttl(self, k):
        return await self.c.ttl(k)

    async def delete(self, keys):
        return await self.c.delete(*keys)

    async def exists(self, keys):
        return await self.c.exists(*keys)

    async def zadd(self, k, mapping):
        return await self.c.zadd(k, mapping)

    async def zincrby(self, k, member, n):
        return await self.c.zincrby(k, n, member)

    async def zrange_withscores(self, k):
        return [list(x) for x in await self.c.zrange(k, 0, -1, withscores=True)]

    async def blpop(self, keys, timeout):
        r = await self.c.blpop(keys, timeout)
        return list(r) if r else None

    async def script(self, code, keys, args):
        if code not in self.scripts:
            self.scripts[code] = self.c.register_script(code)
        return await self.scripts[code](keys=keys, args=args)

    async def pipeline(self, cmds):
        async with self.c.pipeline() as p:
            for op, *args in cmds:
                getattr(p, op)(*args)
            return await p.execute()

    async def scan(self, match):
        return [k async for k in self.c.scan_iter(match=match, count=200)]

    async def close(self):
        await self.c.aclose()


class Glide:
    name = "glide"
    transactions = True

    async def connect(self, nodes):
        self.scripts = {}
        from glide import GlideClusterClient, GlideClusterClientConfiguration, NodeAddress

        cfg = GlideClusterClientConfiguration([NodeAddress(h, p) for h, p in nodes], request_timeout=10_000)
        self.c = await GlideClusterClient.create(cfg)
        return text(await self.c.ping())

    async def set(self, k, v):
        return text(await self.c.set(k, v)) == "OK"

    async def get(self, k):
        return text(await self.c.get(k))

    async def incrby(self, k, n):
        return await self.c.incrby(k, n)

    async def mset(self, mapping):
        return text(await self.c.mset(mapping)) == "OK"

    async def mget(self, keys):
        return text(await self.c.mget(keys))

    async def hset(self, k, mapping):
        return await self.c.hset(k, mapping)

    async def hincrby(self, k, f, n):
        return await self.c.hincrby(k, f, n)

    async def hgetall(self, k):
        return text(await self.c.hgetall(k))

    async def rpush(self, k, items):
        return await self.c.rpush(k, items)

    async def lrange(self, k):
        return text(await self.c.lrange(k, 0, -1))

    async def lpop(self, k):
        return text(await self.c.lpop(k))

    async def expire(self, k, s):
        return await self.c.expire(k, s)

    async def ttl(self, k):
        return await self.c.ttl(k)

    async def delete(self, keys):
        return await self.c.delete(keys)

    async def exists(self, keys):
        return await self.c.exists(keys)

    async def zadd(self, k, mapping):
        return await self.c.zadd(k, mapping)

    async def zincrby(self, k, member, n):
        return await self.c.zincrby(k, n, member)

    async def zrange_withscores(self, k):
        from glide import RangeByIndex

        return [[text(m), sc] for m, sc in (await self.c.zrange_withscores(k, RangeByIndex(0, -1))).items()]

    async def blpop(self, keys, timeout):
        return text(await self.c.blpop(keys, timeout))

    async def script(self, code, keys, args):
        from glide import Script

        if code not in self.scripts:
            self.scripts[code] = Script(code)
        return text(await self.c.invoke_script(self.scripts[code], keys=keys, args=args))

    async def _batch(self, cmds, atomic):
        from glide import ClusterBatch

        b = ClusterBatch(is_atomic=atomic)
        for op, *args in cmds:
            getattr(b, op)(*args)
        res = text(await self.c.exec(b, raise_on_error=True))
        return [True if r == "OK" else r for r in res]

    async def pipeline(self, cmds):
        return await self._batch(cmds, atomic=False)

    async def transaction(self, cmds):
        return await self._batch(cmds, atomic=True)

    async def scan(self, match):
        from glide import ClusterScanCursor

        cursor, keys = ClusterScanCursor(), []
        while not cursor.is_finished():
            cursor, batch = await self.c.scan(cursor, match=match, count=200)
            keys += text(batch)
        return keys

    async def close(self):
        await self.c.close()


class Coredis:
    name = "coredis"
    transactions = True

    async def connect(self, nodes):
        self.scripts = {}
        import coredis

        startup = [{"host": h, "port": p} for h, p in nodes]
        self.c = coredis.RedisCluster(startup_nodes=startup, decode_responses=True, stream_timeout=10)
        await self.c.__aenter__()
        return await self.c.ping()

    async def set(self, k, v):
        return await self.c.set(k, v)

    async def get(self, k):
        return await self.c.get(k)

    async def incrby(self, k, n):
        return await self.c.incrby(k, n)

    async def mset(self, mapping):
        return await self.c.mset(mapping)

    async def mget(self, keys):
        return list(await self.c.mget(keys))

    async def hset(self, k, mapping):
        return await self.c.hset(k, mapping)

    async def hincrby(self, k, f, n):
        return await self.c.hincrby(k, f, n)

    async def hgetall(self, k):
        return dict(await self.c.hgetall(k))

    async def rpush(self, k, items):
        return await self.c.rpush(k, items)

    async def lrange(self, k):
        return list(await self.c.lrange(k, 0, -1))

    async def lpop(self, k):
        return await self.c.lpop(k)

    async def expire(self, k, s):
        return await self.c.expire(k, s)

    async def ttl(self, k):
        return await self.c.ttl(k)

    async def delete(self, keys):
        return await self.c.delete(keys)

    async def exists(self, keys):
        return await self.c.exists(keys)

    async def zadd(self, k, mapping):
        return await self.c.zadd(k, mapping)

    async def zincrby(self, k, member, n):
        return await self.c.zincrby(k, member, n)

    async def zrange_withscores(self, k):
        return [[x.member, x.score] for x in await self.c.zrange(k, 0, -1, withscores=True)]

    async def blpop(self, keys, timeout):
        r = await self.c.blpop(keys, timeout)
        return list(r) if r else None

    async def script(self, code, keys, args):
        if code not in self.scripts:
            self.scripts[code] = self.c.register_script(code)
        return list(await self.scripts[code](keys=keys, args=args))

    async def _pipe(self, cmds, transaction):
        async with self.c.pipeline(transaction=transaction) as p:
            for op, *args in cmds:
                if op == "set":
                    p.set(*args)
                else:
                    getattr(p, op)(*args)
        return list(p.results)

    async def pipeline(self, cmds):
        return await self._pipe(cmds, transaction=False)

    async def transaction(self, cmds):
        return await self._pipe(cmds, transaction=True)

    async def scan(self, match):
        return [k async for k in self.c.scan_iter(match=match, count=200)]

    async def close(self):
        await self.c.__aexit__(None, None, None)


CLIENTS = {c.name: c for c in (RedisPySync, RedisPyAsync, Glide, Coredis)}


# ---------------------------------------------------------------------------------------------


def keys_in_range(base, n, lo, hi):
    """n key names under base whose slots are in lo..=hi."""
    keys, j = [], 0
    while len(keys) < n:
        k = f"{base}:m{j}"
        if lo <= key_slot(k.encode()) <= hi:
            keys.append(k)
        j += 1
    return keys


async def round_(c, r, args, stats):
    """One round; raises Failure on a wrong answer, the client's error on a failed command."""
    lo, hi = args.moving
    base = f"{args.prefix}:{r}"
    ops = 0
    created = set()

    # Single keys: SET, GET.
    keys = [f"{base}:s{i}" for i in range(STRING_KEYS)] + keys_in_range(base, MOVING_KEYS, lo, hi)
    for k in keys:
        expect(f"SET {k}", await c.set(k, f"{k}=1"), True)
    for k in keys:
        expect(f"GET {k}", await c.get(k), f"{k}=1")
    created.update(keys)
    ops += 2 * len(keys)

    # MSET/MGET across slots, split by the client; a missing key reads as nil.
    expect("MSET", await c.mset({k: f"{k}=2" for k in keys}), True)
    missing = f"{base}:missing"
    expect("MGET", await c.mget(keys + [missing]), [f"{k}=2" for k in keys] + [None])
    ops += 2

    # Counters.
    counters = [f"{base}:n{i}" for i in range(COUNTERS // 2)] + keys_in_range(f"{base}:n", COUNTERS // 2, lo, hi)
    for i, k in enumerate(counters):
        expect(f"INCRBY {k}", await c.incrby(k, i + 1), i + 1)
        expect(f"INCRBY {k} again", await c.incrby(k, 10), i + 11)
    created.update(counters)
    ops += 2 * len(counters)

    # A hash and a list, one of each in the moving slots.
    for h in [f"{base}:h", keys_in_range(f"{base}:h", 1, lo, hi)[0]]:
        fields = {f"f{i}": str(i) for i in range(10)}
        expect(f"HSET {h}", await c.hset(h, fields), 10)
        expect(f"HINCRBY {h}", await c.hincrby(h, "f3", 5), 8)
        fields["f3"] = "8"
        expect(f"HGETALL {h}", await c.hgetall(h), fields)
        created.add(h)
        ops += 3
    for lk in [f"{base}:l", keys_in_range(f"{base}:l", 1, lo, hi)[0]]:
        items = [f"i{i}" for i in range(20)]
        expect(f"RPUSH {lk}", await c.rpush(lk, items), 20)
        expect(f"LRANGE {lk}", await c.lrange(lk), items)
        expect(f"LPOP {lk}", await c.lpop(lk), "i0")
        created.add(lk)
        ops += 3

    # A sorted set, a queue (BLPOP takes what is there at once and times out on an empty list:
    # the proxy serves blocking commands on a connection of their own) and a Lua script through
    # the client's script helper (EVALSHA, EVAL when the node does not know the script yet).
    # Each on a plain key in even rounds and in the moving slots in odd ones.
    def pick(name):
        return f"{base}:{name}" if r % 2 == 0 else keys_in_range(f"{base}:{name}", 1, lo, hi)[0]

    z = pick("z")
    expect(f"ZADD {z}", await c.zadd(z, {"a": 1, "b": 2, "c": 3}), 3)
    expect(f"ZINCRBY {z}", await c.zincrby(z, "a", 5), 6.0)
    expect(f"ZRANGE {z} WITHSCORES", await c.zrange_withscores(z), [["b", 2.0], ["c", 3.0], ["a", 6.0]])
    q = pick("q")
    expect(f"RPUSH {q}", await c.rpush(q, ["j1", "j2"]), 2)
    expect(f"BLPOP {q}", await c.blpop([q], 1), [q, "j1"])
    expect(f"BLPOP {q} again", await c.blpop([q], 1), [q, "j2"])
    expect(f"BLPOP {q} empty", await c.blpop([q], 0.05), None)
    sk = pick("lua")
    expect(f"script on {sk}", await c.script(SCRIPT, [sk], ["3"]), [sk, "3", 3])
    expect(f"script on {sk} again", await c.script(SCRIPT, [sk], ["4"]), [sk, "4", 7])
    created.update([z, sk])
    ops += 10

    # A pipeline across slots (the client splits it by node and puts the answers back in order).
    pkeys = [f"{base}:p{i}" for i in range(PIPELINE_KEYS // 2)] + keys_in_range(
        f"{base}:p", PIPELINE_KEYS // 2, lo, hi
    )
    cmds, want = [], []
    for i, k in enumerate(pkeys):
        cmds += [("set", k, str(i)), ("incrby", k, 100), ("get", k)]
        want += [True, i + 100, str(i + 100)]
    expect("pipeline", await c.pipeline(cmds), want)
    created.update(pkeys)
    ops += len(cmds)

    # A transaction on one slot (the moving one in odd rounds).
    if c.transactions:
        tag = f"{base}:tx" if r % 2 == 0 else keys_in_range(f"{base}:tx", 1, lo, hi)[0]
        tk = [f"{base}:t{{{tag}}}:a", f"{base}:t{{{tag}}}:b"]
        cmds = [("set", tk[0], "1"), ("incrby", tk[0], 2), ("set", tk[1], "x"), ("get", tk[0])]
        expect("transaction", await c.transaction(cmds), [True, 3, True, "3"])
        created.update(tk)
        ops += len(cmds)
        stats["transactions"] += 1

    # EXPIRE/TTL on a few keys, the moving ones included.
    for k in keys[:4] + keys[-4:]:
        expect(f"EXPIRE {k}", bool(await c.expire(k, TTL)), True)
        t = await c.ttl(k)
        if not (TTL - 5 <= t <= TTL):
            raise Failure(f"TTL {k}: got {t!r}, expected {TTL - 5}..{TTL}")
        ops += 2

    # SCAN over the whole cluster. A key in a slot that moved while the client was iterating
    # may be missed (Redis Cluster's own SCAN has the same limit); every other key must be
    # found, and nothing that was not written may show up.
    found = await c.scan(f"{base}:*")
    ops += 1
    got = set(found)
    extra = got - created
    if extra:
        raise Failure(f"SCAN {base}:* found keys never written: {sorted(extra)[:5]}")
    lost = {k for k in created - got if not lo <= key_slot(k.encode()) <= hi}
    if lost:
        raise Failure(f"SCAN {base}:* missed {len(lost)} keys outside the moving slots: {sorted(lost)[:5]}")
    stats["scan_missed_moving"] += len(created - got)
    # SCAN may return a key twice (a key in a moving slot seen on both sides, a rehash on a node);
    # counted, by where the key lives, to tell the two apart in the summary.
    seen = set()
    for k in found:
        if k in seen:
            moving = lo <= key_slot(k.encode()) <= hi
            stats["scan_duplicates_moving" if moving else "scan_duplicates_other"] += 1
        seen.add(k)

    # DEL and EXISTS across slots (split by the client); the round leaves nothing behind.
    everything = sorted(created)
    expect("EXISTS", await c.exists(everything), len(everything))
    expect("DEL", await c.delete(everything), len(everything))
    expect("EXISTS after DEL", await c.exists(everything), 0)
    expect(f"GET {keys[0]} after DEL", await c.get(keys[0]), None)
    ops += 4
    return ops


async def main_async(args, stop):
    c = CLIENTS[args.client]()
    pong = await c.connect(args.nodes)
    if pong not in (True, "PONG"):
        raise Failure(f"PING: got {pong!r}")
    out("ready")
    stats = {"rounds": 0, "ops": 0, "transactions": 0, "scan_missed_moving": 0,
             "scan_duplicates_moving": 0, "scan_duplicates_other": 0}
    started = time.monotonic()
    r = 0
    while not stop["now"]:
        t0 = time.monotonic()
        ops = await round_(c, r, args, stats)
        stats["rounds"] += 1
        stats["ops"] += ops
        out({"round": r, "ops": ops, "seconds": round(time.monotonic() - t0, 4)})
        r += 1
    stats["seconds"] = round(time.monotonic() - started, 3)
    await c.close()
    out({"summary": stats})


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--client", required=True, choices=sorted(CLIENTS))
    p.add_argument("--nodes", required=True, help="comma-separated host:port of cluster proxies")
    p.add_argument("--moving", required=True, help="the slots that move: START-END")
    p.add_argument("--prefix", default="cc")
    args = p.parse_args()
    args.nodes = [(h, int(port)) for h, port in (n.rsplit(":", 1) for n in args.nodes.split(",") if n)]
    lo, hi = args.moving.split("-")
    args.moving = (int(lo), int(hi))
    args.prefix = f"{args.prefix}:{args.client}"

    stop = {"now": False}

    def on_term(*_):
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        asyncio.run(main_async(args, stop))
    except Exception as e:  # noqa: BLE001 - every failure is reported the same way
        log(traceback.format_exc())
        out({"error": f"{type(e).__name__}: {e}"})
        sys.exit(1)


if __name__ == "__main__":
    main()
