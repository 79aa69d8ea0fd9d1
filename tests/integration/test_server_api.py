"""The server API (PROTOCOL.md §11, docs/PROTOCOL.md "Server API") and
the cluster control plane under it ("Cluster control plane"): three
nodes on one RabbitMQ, every call over HTTP (the API listener) and over
AMQP (the API queue), with their errors."""

import asyncio
import json
import signal
import time
import uuid

import pytest

from rabbitmq import amqp_server, publisher, unique_exchange  # noqa: F401
from support import expect_only_sentinel, recv_json, request, run, \
    subscribe, wait_closed, wait_for, ws_connect

# Short cluster timings: a killed node leaves within TIMEOUT seconds.
HEARTBEAT = 1
TIMEOUT = 3
CLUSTER = {"cluster": {"heartbeat": HEARTBEAT, "timeout": TIMEOUT,
                       "query_timeout": 2}}


def config(extra=None):
    cfg = {k: dict(v) for k, v in CLUSTER.items()}
    for k, v in (extra or {}).items():
        cfg.setdefault(k, {}).update(v)
    return cfg


def cluster(amqp_server, n=3, extra=None):
    """n nodes on one exchange, each seeing all the others."""
    exchange = unique_exchange("bagou-api")
    nodes = [amqp_server(config=config(extra), exchange=exchange)
             for _ in range(n)]
    for srv in nodes:
        wait_for(lambda: len(info(srv)) == n, timeout=5,
                 what="%d nodes in /api/info" % n)
    return exchange, nodes


def api(srv, method, path, body=None, key=None):
    """(status, JSON body) of a call on srv's API listener."""
    headers = {"Authorization": "Bearer " + key} if key else None
    if method == "GET":
        status, _, data = srv.api_get(path, headers=headers)
    else:
        status, _, data = srv.post(path, body, headers=headers)
    return status, json.loads(data)


def info(srv):
    status, doc = api(srv, "GET", "/api/info")
    assert status == 200, doc
    return doc["nodes"]


def node_id(srv):
    """The node's id, from its start-up line."""
    for line in srv.log().splitlines():
        if ", node " in line:
            return line.split(", node ")[1].split(",")[0]
    raise AssertionError("no node id in the log")


# ------------------------------------------------------------ control

def test_nodes_see_each_other_and_a_killed_one_leaves(amqp_server):
    _, nodes = cluster(amqp_server)
    ids = sorted(node_id(s) for s in nodes)
    for srv in nodes:
        listed = info(srv)
        assert sorted(n["node"] for n in listed) == ids
        for n in listed:
            assert n["version"] and n["uptime"] >= 0
            assert n["connections"] == 0 and n["subscriptions"] == 0
    victim = nodes[2]
    victim.expected_exit = (-signal.SIGKILL,)
    victim.signal(signal.SIGKILL)
    victim.wait_exit(5)
    t0 = time.monotonic()
    for srv in nodes[:2]:
        wait_for(lambda: len(info(srv)) == 2, timeout=TIMEOUT + 2,
                 what="the killed node to leave /api/info")
        assert node_id(victim) not in [n["node"] for n in info(srv)]
    # Silent for more than TIMEOUT: gone at the next check (1 s).
    assert time.monotonic() - t0 <= TIMEOUT + 1.5
