#!/usr/bin/env python3
"""Runs pipelines twice: through redis-py's RedisCluster against sluice, and through a plain
redis-py pipeline against one plain redis-server holding the same data.

Used by integration-tests/tests/pipeline_order.rs (the differential test through a cluster
client). The pipelines come from the Rust generator (sluice_harness::differential), one JSON
array of commands per line in --input; for each, one JSON line goes to stdout:

  {"got": [...], "want": [...]}       the answers of the cluster and of the reference
  {"failed": "..."}                    the cluster pipeline raised as a whole

Both sides are the same client library, so redis-py's reply parsing is the same on both;
answers become JSON (bytes as text, sets sorted, errors as {"error": message}).
"""

import argparse
import json
import re
import sys

import redis
from redis.cluster import ClusterNode, RedisCluster

# redis-py prefixes errors raised in a pipeline with the command's place in it, which
# differs between a cluster pipeline and a plain one.
ANNOTATION = re.compile(r"^Command # \d+ \(.*?\) of pipeline caused error: ", re.S)


def to_json(v):
    if isinstance(v, Exception):
        return {"error": ANNOTATION.sub("", str(v))}
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, bool) or v is None or isinstance(v, (int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    if isinstance(v, set):
        return sorted((to_json(x) for x in v), key=json.dumps)
    if isinstance(v, dict):
        return [x for k, val in v.items() for x in (to_json(k), to_json(val))]
    return repr(v)


def run(pipe, commands):
    for args in commands:
        pipe.execute_command(*args)
    return [to_json(r) for r in pipe.execute(raise_on_error=False)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", required=True, help="host:port of the proxies, comma-separated")
    ap.add_argument("--reference", required=True, help="host:port of the plain redis-server")
    ap.add_argument("--input", required=True, help="one JSON array of commands per line")
    a = ap.parse_args()
    nodes = [ClusterNode(*n.rsplit(":", 1)) for n in a.nodes.split(",")]
    cluster = RedisCluster(startup_nodes=nodes, socket_timeout=30)
    host, port = a.reference.rsplit(":", 1)
    reference = redis.Redis(host=host, port=int(port), socket_timeout=30)
    with open(a.input) as f:
        for line in f:
            commands = json.loads(line)
            want = run(reference.pipeline(transaction=False), commands)
            try:
                got = run(cluster.pipeline(transaction=False), commands)
            except Exception as e:  # the whole pipeline failed: report, go on
                print(json.dumps({"failed": f"{type(e).__name__}: {e}"}), flush=True)
                continue
            print(json.dumps({"got": got, "want": want}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
