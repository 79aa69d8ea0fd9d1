"""History, the long runs (make test-history-long; not in make test):
1,000 clients on one node, the node SIGKILLed while broadcasts flow
through another, 10 s of missed traffic, then every client reconnects
at once to the surviving node with its position and must get every
missed broadcast once and in order before any live one. Prints the
recovery time (kill -> reconnect wave -> last client recovered).

Also a three-node RabbitMQ cluster (one epmd, one cookie), a bagou node
on each broker, one broker SIGKILLed while 20 clients cut from one bagou
node resume on another: every missed broadcast once and in order.

HISTORY_LONG_RUN=1 runs them; HISTORY_LONG_CLIENTS (1000),
HISTORY_LONG_RATE (broadcasts/s, 20) and HISTORY_LONG_MISSED (s, 10)
size it."""

import asyncio
import os
import time

import pytest
import websockets

from rabbitmq import AmqpServer, RabbitMQ, _kill_group, amqp_server, \
    unique_exchange  # noqa: F401
from support import recv_json, run, send_json, stop_servers, ws_connect
from test_history import amqp_cfg, post, until_callback, wait_caught_up

pytestmark = pytest.mark.skipif(not os.environ.get("HISTORY_LONG_RUN"),
                                reason="make test-history-long")

N = int(os.environ.get("HISTORY_LONG_CLIENTS", "1000"))


def cpu_s(srv):
    """CPU seconds (user + system) the server process has used."""
    with open("/proc/%d/stat" % srv.proc.pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
RATE = float(os.environ.get("HISTORY_LONG_RATE", "20"))
MISSED = float(os.environ.get("HISTORY_LONG_MISSED", "10"))


def test_thousand_clients_resume_after_node_kill(amqp_server):
    ex = unique_exchange("hist-long")
    cfg = amqp_cfg(ex, size="100000")
    cfg["limits"] = {"max_handshakes": "100000",
                     "max_per_address": "0"}
    a = amqp_server(cfg, workers=2)
    b = amqp_server(cfg, workers=2)

    async def scenario():
        await wait_caught_up(a)
        await wait_caught_up(b)
        stop = asyncio.Event()
        sent = []

        async def publisher():
            i = 0
            while not stop.is_set():
                await asyncio.to_thread(post, b, "chat", i)
                sent.append(i)
                i += 1
                await asyncio.sleep(1.0 / RATE)

        conns = []
        for k in range(N):
            ws, _ = await ws_connect(a, open_timeout=30)
            await send_json(ws, {"event": "subscribe", "data": {
                "channel": "chat"}, "callbackId": "s"})
            conns.append(ws)
        states = []
        for ws in conns:
            _, d = await until_callback(ws, "s")
            states.append({"epoch": d["epoch"], "pos": d["offset"],
                           "got": []})
        task = asyncio.create_task(publisher())

        async def live(ws, st):
            try:
                while True:
                    m = await recv_json(ws, timeout=60)
                    assert m["offset"] > st["pos"]
                    st["pos"] = m["offset"]
                    st["got"].append(m["data"])
            except (websockets.exceptions.ConnectionClosed,
                    ConnectionError):
                return
        readers = [asyncio.create_task(live(ws, st))
                   for ws, st in zip(conns, states)]
        await asyncio.sleep(2.0)
        a.signal(9)                       # the node dies
        a.expected_exit = (0, -9)
        t_kill = time.monotonic()
        await asyncio.gather(*readers)
        await asyncio.sleep(MISSED)       # traffic they miss
        t_wave = time.monotonic()
        cpu0 = cpu_s(b)
        done_times = []

        async def resume(k, st):
            ws, _ = await ws_connect(b, open_timeout=60)
            await send_json(ws, {"event": "subscribe", "data": {
                "channel": "chat", "recover": {"epoch": st["epoch"],
                                               "offset": st["pos"]}},
                "callbackId": "r"})
            before, d = await until_callback(ws, "r")
            assert d["recovered"] is True, d
            for m in before:
                assert m["offset"] > st["pos"]
                st["pos"] = m["offset"]
                st["got"].append(m["data"])
            done_times.append(time.monotonic())
            return ws
        resumed = await asyncio.gather(*[resume(k, st)
                                         for k, st in enumerate(states)])
        t_done = time.monotonic()
        cpu_wave = cpu_s(b) - cpu0
        stop.set()
        await task
        last = sent[-1]

        async def finish(ws, st):
            while not st["got"] or st["got"][-1] != last:
                m = await recv_json(ws, timeout=30)
                assert m["offset"] > st["pos"]
                st["pos"] = m["offset"]
                st["got"].append(m["data"])
            await ws.close()
        await asyncio.gather(*[finish(ws, st)
                               for ws, st in zip(resumed, states)])
        for st in states:
            first = st["got"][0] if st["got"] else 0
            assert st["got"] == list(range(first, last + 1)), st["got"][:20]
        print("\nhistory-long: %d clients, %.0f broadcasts/s, %.1f s "
              "missed (%d broadcasts each); reconnect wave to last "
              "recovered: %.2f s (median %.2f s); kill to last recovered: "
              "%.2f s; CPU of the node serving them during the wave: %.2f s"
              % (N, RATE, t_wave - t_kill, int((t_wave - t_kill) * RATE),
                 t_done - t_wave,
                 sorted(done_times)[len(done_times) // 2] - t_wave,
                 t_done - t_kill, cpu_wave))

    run(scenario(), timeout=600)


# ------------------------------------------------ a three-node RabbitMQ

COOKIE = "BAGOUHISTORYCLUSTERTESTCOOKIE"


class ClusterNode(RabbitMQ):
    """A broker of a private three-node cluster: one epmd (the first
    node's), one Erlang cookie, distribution on loopback."""

    def __init__(self, base_dir, shared_epmd=None):
        super().__init__(base_dir=base_dir)
        self.shared_epmd = shared_epmd

    def _write_files(self):
        super()._write_files()
        path = os.path.join(self.dir, ".erlang.cookie")
        with open(path, "w") as f:
            f.write(COOKIE)
        os.chmod(path, 0o400)

    def _start_epmd(self):
        if self.shared_epmd is None:
            return super()._start_epmd()
        self.epmd_port = self.shared_epmd
        self.epmd = None

    def kill(self):
        _kill_group(self.proc)


def start_cluster(base_dir):
    first = ClusterNode(base_dir).start()
    nodes = [first]
    try:
        for _ in range(2):
            n = ClusterNode(base_dir, shared_epmd=first.epmd_port).start()
            nodes.append(n)
            n.rabbitmqctl("stop_app")
            n.rabbitmqctl("join_cluster", first.node)
            n.start_app()
    except Exception:
        for n in reversed(nodes):
            n.stop()
        raise
    return nodes


def test_three_node_rabbitmq_broker_killed_while_clients_resume(tmp_path):
    brokers = start_cluster(str(tmp_path / "rmq"))
    servers = []
    try:
        ex = unique_exchange("hist-cluster")
        cfg = amqp_cfg(ex)
        cfg["amqp"] = {"exchange": ex}
        for i, br in enumerate(brokers):
            srv = AmqpServer(str(tmp_path), br.url, config=cfg, workers=2,
                             name="bagou%d" % i)
            servers.append(srv)
            srv.start()
            srv.wait_amqp("connected", timeout=30.0)
        # Which broker leads the stream: the one killed is a replica
        # (publishes are not confirmed, so a leader change may lose what
        # is in flight to it; that is the broker's, not history's).
        out = brokers[0].rabbitmqctl("list_queues", "name", "leader")
        leader = [ln.split()[1] for ln in out.splitlines()
                  if ln.split() and ln.split()[0] == ex + ".history"][0]
        lead = [i for i, br in enumerate(brokers) if br.node == leader][0]
        victim = (lead + 1) % 3
        a, b = servers[victim], servers[lead]   # clients cut from a
        c = servers[(lead + 2) % 3]             # publisher

        async def scenario():
            epochs = {(await wait_caught_up(s))["epoch"] for s in servers}
            assert len(epochs) == 1, epochs
            epoch = epochs.pop()
            stop, sent = asyncio.Event(), []
            clients = []
            for _ in range(20):
                ws, _ = await ws_connect(a)
                await send_json(ws, {"event": "subscribe", "data": {
                    "channel": "chat"}, "callbackId": "s"})
                _, d = await until_callback(ws, "s")
                clients.append({"ws": ws, "pos": d["offset"], "got": []})

            async def publisher():
                i = 0
                while not stop.is_set():
                    await asyncio.to_thread(post, c, "chat", i)
                    sent.append(i)
                    i += 1
                    await asyncio.sleep(0.01)
            task = asyncio.create_task(publisher())
            for cl in clients:
                for _ in range(10):
                    m = await recv_json(cl["ws"])
                    cl["pos"] = m["offset"]
                    cl["got"].append(m["data"])
                await cl["ws"].close()
            brokers[victim].kill()         # a broker node dies
            a.expected_exit = (0, 1, -9)
            await asyncio.sleep(1.0)
            for k, cl in enumerate(clients):
                ws, _ = await ws_connect(b)
                await send_json(ws, {"event": "subscribe", "data": {
                    "channel": "chat", "recover": {
                        "epoch": epoch, "offset": cl["pos"]}},
                    "callbackId": "r"})
                before, d = await until_callback(ws, "r")
                assert d["recovered"] is True, d
                for m in before:
                    assert m["offset"] > cl["pos"]
                    cl["pos"] = m["offset"]
                    cl["got"].append(m["data"])
                cl["ws"] = ws
            stop.set()
            await task
            last = sent[-1]
            for cl in clients:
                while cl["got"][-1] != last:
                    m = await recv_json(cl["ws"], timeout=30)
                    assert m["offset"] > cl["pos"]
                    cl["pos"] = m["offset"]
                    cl["got"].append(m["data"])
                first = cl["got"][0]
                assert cl["got"] == list(range(first, last + 1))
                await cl["ws"].close()
            print("\nhistory-cluster: 20 clients resumed on another node "
                  "after the RabbitMQ node of theirs (a stream replica) "
                  "was killed; %d broadcasts" % (last + 1))

        run(scenario(), timeout=300)
    finally:
        stop_servers(servers)
        for br in reversed(brokers):
            br.stop()
