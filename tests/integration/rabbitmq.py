"""A private RabbitMQ broker for the integration tests, and the helpers
that talk to it (the "Django side" publisher, bagou-server with AMQP on).

How the broker is started (Debian bookworm, rabbitmq-server 3.10, as root
or not, without systemd):

* /usr/sbin/rabbitmq-server is not used: as root it `su`s to the rabbitmq
  user, cds to /var/lib/rabbitmq and writes /var/log/rabbitmq. The real
  script, /usr/lib/rabbitmq/bin/rabbitmq-server, runs as whoever calls it
  and takes everything from the environment:
    RABBITMQ_CONF_ENV_FILE        an empty file of ours, so the system's
                                  /etc/rabbitmq/rabbitmq-env.conf is not read
    RABBITMQ_CONFIG_FILE          our rabbitmq.conf (listener on
                                  127.0.0.1:PORT, log file, disk limit)
    RABBITMQ_ENABLED_PLUGINS_FILE "[]." : no plugins, faster boot
    RABBITMQ_MNESIA_BASE, RABBITMQ_LOG_BASE, RABBITMQ_PLUGINS_EXPAND_DIR,
    RABBITMQ_PID_FILE             all under one temporary directory
    RABBITMQ_NODENAME             bagou-test-PORT@localhost
    RABBITMQ_NODE_IP_ADDRESS/_PORT 127.0.0.1 and a free port
    RABBITMQ_DIST_PORT            a free port for Erlang distribution
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS / RABBITMQ_CTL_ERL_ARGS
                                  -kernel inet_dist_use_interface
                                  {127,0,0,1}: distribution on loopback only
    HOME                          the temporary directory: Erlang creates
                                  its .erlang.cookie there, and rabbitmqctl
                                  (same HOME) reads the same cookie
    ERL_EPMD_ADDRESS=127.0.0.1, ERL_EPMD_PORT = a free port: the broker and
                                  rabbitmqctl use a private epmd, which this
                                  module starts (`epmd -port P -address
                                  127.0.0.1`, foreground) and kills at the
                                  end, so no epmd outlives the tests and a
                                  system epmd or another test run on this
                                  machine is never touched.
* The broker runs in its own session (process group); stop() runs
  `rabbitmqctl -n NODE stop`, waits, then SIGKILLs that process group and
  epmd, and removes the temporary directory.
* Readiness is an AMQP login with pika (guest/guest is allowed from
  loopback), polled for at most START_TIMEOUT seconds. On failure the
  exception carries the broker's output and log files; on success nothing
  is printed.

Measured on 2 cores: start (to the first login) about 6 s, stop_app
about 1 s, start_app about 2 s, stop about 2 s; each rabbitmqctl call
boots an Erlang VM, so under CPU load these grow several-fold.

Set BAGOU_KEEP_RABBITMQ=1 to keep the temporary directory (logs, mnesia)
after the session.

RabbitMQ(tls={"cacertfile": ..., "certfile": ..., "keyfile": ...}) also
opens a TLS listener on 127.0.0.1:.tls_port (.tls_port is set at start;
ssl_options.verify = verify_none, no client certificate asked for). The
plain listener, .url and readiness are unchanged. Used by test_amqps.py,
which starts such a broker of its own next to the session one.
"""

import atexit
import contextlib
import glob
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from support import HOST, Server, free_port, stop_servers, wait_for

RABBIT_BIN = "/usr/lib/rabbitmq/bin"
START_TIMEOUT = 60.0          # seconds until the broker accepts logins
CTL_TIMEOUT = 60.0            # one rabbitmqctl call
STOP_TIMEOUT = 20.0           # `rabbitmqctl stop` before SIGKILL
TLS_LISTENER_TIMEOUT = 15.0   # after the first login, to its log line


class BrokerError(Exception):
    pass


def _pika():
    import pika             # imported late: collection must not need it
    import pika.exceptions
    return pika


@contextlib.contextmanager
def _quiet_pika():
    log = logging.getLogger("pika")
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        log.setLevel(level)


def _port_pair():
    """Two distinct free ports."""
    a = free_port()
    for _ in range(20):
        b = free_port()
        if b != a:
            return a, b
    raise BrokerError("no two free ports")


PORT_TAKEN = ("eaddrinuse", "dist_port_already_used")


def _port_taken(error):
    """True when a broker's start failed only because a port it was
    given was bound by someone else in the meantime."""
    return any(marker in error for marker in PORT_TAKEN)


class RabbitMQ:
    """One private broker. url/port/node are set once started."""

    def __init__(self, base_dir=None, tls=None):
        self.base_dir = base_dir
        self.tls = dict(tls) if tls else None
        self.tls_port = None
        self.dir = None
        self.port = None
        self.dist_port = None
        self.epmd_port = None
        self.node = None
        self.url = None
        self.proc = None
        self.epmd = None
        self._out = None
        self._stopped = False

    # ------------------------------------------------------------ setup
    def _env(self):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("RABBITMQ_") and not k.startswith("ERL_")}
        d = self.dir
        loopback = "-kernel inet_dist_use_interface {127,0,0,1}"
        env.update({
            "HOME": d,
            "LC_ALL": "C.UTF-8",
            "LANG": "C.UTF-8",
            "ERL_EPMD_ADDRESS": HOST,
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_CONF_ENV_FILE": os.path.join(d, "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": os.path.join(d, "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(d,
                                                          "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(d,
                                                          "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": os.path.join(d, "mnesia"),
            "RABBITMQ_LOG_BASE": os.path.join(d, "log"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": os.path.join(d, "plugins-expand"),
            "RABBITMQ_PID_FILE": os.path.join(d, "rabbitmq.pid"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": loopback,
            "RABBITMQ_CTL_ERL_ARGS": loopback,
        })
        return env

    def _write_files(self):
        d = self.dir
        for sub in ("mnesia", "log", "plugins-expand"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        with open(os.path.join(d, "rabbitmq-env.conf"), "w") as f:
            f.write("# empty: keeps /etc/rabbitmq/rabbitmq-env.conf out\n")
        with open(os.path.join(d, "enabled_plugins"), "w") as f:
            f.write("[].\n")
        with open(os.path.join(d, "advanced.config"), "w") as f:
            f.write("[].\n")
        with open(os.path.join(d, "rabbitmq.conf"), "w") as f:
            f.write("\n".join([
                "listeners.tcp.1 = %s:%d" % (HOST, self.port),
                "loopback_users.guest = true",
                "log.console = false",
                "log.file = rabbit.log",
                "log.file.level = info",
                # A nearly full disk must not block the publishers.
                "disk_free_limit.absolute = 1MB",
                "vm_memory_high_watermark.relative = 0.8",
                "",
            ] + self._tls_conf()))

    def _tls_conf(self):
        """rabbitmq.conf lines of the TLS listener (none without tls)."""
        if not self.tls:
            return []
        return [
            "listeners.ssl.1 = %s:%d" % (HOST, self.tls_port),
            "ssl_options.cacertfile = %s" % self.tls["cacertfile"],
            "ssl_options.certfile = %s" % self.tls["certfile"],
            "ssl_options.keyfile = %s" % self.tls["keyfile"],
            "ssl_options.verify = verify_none",
            "ssl_options.fail_if_no_peer_cert = false",
            "",
        ]

    def start(self, timeout=START_TIMEOUT):
        """Starts the broker; when one of its free ports was taken by
        another process between choosing and binding it (other test runs
        on this machine, or any client's outgoing connection: the ports
        come from the ephemeral range), starts again on new ports, at
        most 3 times. The AMQP listener says eaddrinuse; the Erlang
        distribution port says dist_port_already_used."""
        for attempt in range(3):
            try:
                return self._start_once(timeout)
            except BrokerError as e:
                if not _port_taken(str(e)) or attempt == 2:
                    raise
                self._stopped = False
                self.proc = self.epmd = None

    def _start_once(self, timeout):
        server = os.path.join(RABBIT_BIN, "rabbitmq-server")
        if not os.access(server, os.X_OK):
            raise BrokerError("%s not found: apt-get install rabbitmq-server "
                              "(make test-packages)" % server)
        if self.base_dir:
            os.makedirs(self.base_dir, exist_ok=True)
        self.dir = tempfile.mkdtemp(prefix="bagou-rabbitmq-",
                                    dir=self.base_dir)
        self.port, self.dist_port = _port_pair()
        if self.tls:
            self.tls_port = self._pick_tls_port()
        self.node = "bagou-test-%d@localhost" % self.port
        self.url = "amqp://guest:guest@%s:%d/" % (HOST, self.port)
        self._write_files()
        atexit.register(self.stop)
        self._out = open(os.path.join(self.dir, "startup.log"), "ab")
        try:
            self._start_epmd()
        except BrokerError:
            self.stop()
            raise
        env = self._env()
        self.proc = subprocess.Popen(
            [server], cwd=self.dir, stdin=subprocess.DEVNULL,
            stdout=self._out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)
        try:
            self.wait_ready(timeout)
            if self.tls:
                self._wait_tls_listener()
        except BrokerError:
            self.stop()
            raise
        return self

    def _pick_tls_port(self):
        for _ in range(20):
            port = free_port()
            if port not in (self.port, self.dist_port):
                return port
        raise BrokerError("no free port for the TLS listener")

    def _wait_tls_listener(self, timeout=TLS_LISTENER_TIMEOUT):
        """The broker takes AMQP logins even when its TLS listener could
        not bind (it logs the failure and runs on): once it is ready, its
        log must say the TLS listener started. A port taken meanwhile
        raises with eaddrinuse, so start() tries new ports."""
        started = "started TLS (SSL) listener on %s:%d" % (HOST,
                                                           self.tls_port)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if started in text:
                return
            if "eaddrinuse" in text:
                raise BrokerError("the TLS listener's port %d was taken "
                                  "(eaddrinuse)\n%s" % (self.tls_port, text))
            time.sleep(0.1)
        # Not in the log (another wording): the caller's handshake says.
    def _start_epmd(self):
        """A private epmd on a free loopback port, listening before the
        broker starts (else erl would start a daemon epmd of its own)."""
        for _ in range(3):
            self.epmd_port = free_port()
            self.epmd = subprocess.Popen(
                ["epmd", "-port", str(self.epmd_port), "-address", HOST],
                stdin=subprocess.DEVNULL, stdout=self._out,
                stderr=subprocess.STDOUT, env=self._env(),
                start_new_session=True)
            deadline = time.monotonic() + 5.0
            while self.epmd.poll() is None and time.monotonic() < deadline:
                try:
                    socket.create_connection((HOST, self.epmd_port),
                                             timeout=0.5).close()
                    return
                except OSError:
                    time.sleep(0.02)
            _kill_group(self.epmd)
            self.epmd = None
        raise BrokerError("epmd did not start\n%s" % self.log())

    # ------------------------------------------------------------ state
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def try_login(self, timeout=2.0):
        """True when an AMQP login (and a channel) succeeds now. pika's
        own error logging of the refused attempts is muted meanwhile."""
        with _quiet_pika():
            return self._try_login(timeout)

    def _try_login(self, timeout):
        pika = _pika()
        params = pika.URLParameters(self.url)
        params.socket_timeout = timeout
        params.blocked_connection_timeout = timeout
        params.connection_attempts = 1
        params.stack_timeout = timeout
        try:
            conn = pika.BlockingConnection(params)
        except Exception:
            return False
        try:
            conn.channel()
            return True
        except Exception:
            return False
        finally:
            try:
                conn.close()
            except Exception:
                pass

    def wait_ready(self, timeout=START_TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise BrokerError("rabbitmq-server exited with %s at start\n%s"
                                  % (self.proc.returncode, self.log()))
            if self.try_login():
                return
            if time.monotonic() >= deadline:
                raise BrokerError("RabbitMQ did not accept an AMQP login "
                                  "within %.0f s on %s\n%s"
                                  % (timeout, self.url, self.log()))
            time.sleep(0.2)

    def log(self, limit=20000):
        """The broker's output and log files (the last limit bytes each)."""
        parts = []
        if not self.dir:
            return ""
        paths = [os.path.join(self.dir, "startup.log")] + sorted(
            glob.glob(os.path.join(self.dir, "log", "*")))
        for path in paths:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            if len(data) > limit:
                data = b"[... %d bytes cut ...]\n" % (len(data) - limit) \
                    + data[-limit:]
            parts.append("==== %s\n%s" % (path, data.decode("utf-8",
                                                             "replace")))
        return "\n".join(parts)

    # ------------------------------------------------------------ control
    def rabbitmqctl(self, *args, timeout=CTL_TIMEOUT, check=True):
        """Runs rabbitmqctl -n NODE ARGS; returns its stdout (str).
        With check, a non-zero exit raises BrokerError."""
        argv = [os.path.join(RABBIT_BIN, "rabbitmqctl"), "-n", self.node,
                "-q"] + [str(a) for a in args]
        try:
            res = subprocess.run(argv, cwd=self.dir, env=self._env(),
                                 stdin=subprocess.DEVNULL,
                                 capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BrokerError("%s: no answer within %.0f s"
                              % (" ".join(argv), timeout))
        out = res.stdout.decode("utf-8", "replace")
        if check and res.returncode != 0:
            raise BrokerError("%s -> exit %d\n%s%s"
                              % (" ".join(argv), res.returncode, out,
                                 res.stderr.decode("utf-8", "replace")))
        return out

    def stop_app(self):
        """Stops the RabbitMQ application (the Erlang node stays up): every
        AMQP connection is closed and new ones are refused."""
        self.rabbitmqctl("stop_app")

    def start_app(self, timeout=START_TIMEOUT):
        """Starts it again and waits until logins work."""
        self.rabbitmqctl("start_app")
        self.wait_ready(timeout)

    def stop(self):
        """rabbitmqctl stop, then SIGKILL of what is left; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    self.rabbitmqctl("stop", timeout=STOP_TIMEOUT,
                                     check=False)
                except BrokerError:
                    pass
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    pass
            _kill_group(self.proc)
        if self.epmd is not None:
            _kill_group(self.epmd)
        if self._out is not None:
            self._out.close()
            self._out = None
        if self.dir and not os.environ.get("BAGOU_KEEP_RABBITMQ"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def __repr__(self):
        return "<RabbitMQ %s %s>" % (self.node, self.url)


def _kill_group(proc):
    """SIGKILLs the process group this module started (its own session:
    beam.smp, erl_child_setup, inet_gethost, ...) and reaps its leader."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


# ---------------------------------------------------------------- publisher

class Publisher:
    """A pika BlockingConnection to the broker: the application side.

    publish() sends a broadcast to the exchange with routing key = the
    channel name when exactly one channel is named, else "" (PROTOCOL §5).
    The exchange is declared first (topic, durable), as bagou-server
    declares it, so publishing works before any server has connected."""

    def __init__(self, broker, exchange="bagou"):
        pika = _pika()
        params = pika.URLParameters(broker.url)
        params.socket_timeout = 10
        params.blocked_connection_timeout = 30
        self.pika = pika
        self.exchange = exchange
        self.conn = pika.BlockingConnection(params)
        self.ch = self.conn.channel()
        if exchange:
            self.ch.exchange_declare(exchange, exchange_type="topic",
                                     durable=True)

    @staticmethod
    def routing_key(msg):
        if isinstance(msg, dict):
            ch = msg.get("channel")
            if isinstance(ch, str):
                return ch
            if isinstance(ch, list) and len(ch) == 1 \
                    and isinstance(ch[0], str):
                return ch[0]
        return ""

    def publish(self, msg, routing_key=None, exchange=None):
        """msg: a dict/list (sent as JSON), str or raw bytes."""
        if isinstance(msg, (bytes, bytearray)):
            body = bytes(msg)
        elif isinstance(msg, str):
            body = msg.encode("utf-8")
        else:
            body = json.dumps(msg).encode("utf-8")
        if routing_key is None:
            routing_key = self.routing_key(msg)
        self.ch.basic_publish(
            exchange=self.exchange if exchange is None else exchange,
            routing_key=routing_key, body=body)

    def flush(self):
        """Lets pika write what it buffered (BlockingConnection writes on
        its own; this also services heartbeats)."""
        self.conn.process_data_events(time_limit=0)

    def tap(self, routing_key="#"):
        """Binds a new exclusive queue to the exchange; returns its name.
        Read it with get()."""
        res = self.ch.queue_declare("", exclusive=True, auto_delete=True)
        q = res.method.queue
        self.ch.queue_bind(q, self.exchange, routing_key=routing_key)
        return q

    def get(self, queue, timeout=10.0):
        """(routing key, decoded JSON body) of the next message in queue,
        bounded."""
        deadline = time.monotonic() + timeout
        while True:
            method, _props, body = self.ch.basic_get(queue, auto_ack=True)
            if method is not None:
                return method.routing_key, json.loads(body)
            if time.monotonic() >= deadline:
                raise AssertionError("nothing in queue %s within %.1f s"
                                     % (queue, timeout))
            self.conn.sleep(0.02)

    def drain(self, queue, quiet=0.3):
        """Every message now in queue, after quiet seconds of silence."""
        out = []
        self.conn.sleep(quiet)
        while True:
            method, _props, body = self.ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((method.routing_key, json.loads(body)))

    def close(self):
        try:
            if self.conn.is_open:
                self.conn.close()
        except Exception:
            pass


# ---------------------------------------------------------------- servers

class AmqpServer(Server):
    """bagou-server with --amqp-url URL instead of support's 'none'."""

    def __init__(self, tmpdir, amqp_url, **kw):
        super().__init__(tmpdir, **kw)
        self.amqp_url = amqp_url

    def argv(self):
        argv = super().argv()
        i = argv.index("--amqp-url")
        argv[i + 1] = self.amqp_url
        return argv

    def amqp_state(self):
        try:
            return self.health().get("amqp")
        except (AssertionError, OSError, ValueError):
            return None

    def wait_amqp(self, state="connected", timeout=15.0):
        """Polls /health until "amqp" is state."""
        seen = []

        def check():
            s = self.amqp_state()
            if not seen or seen[-1] != s:
                seen.append(s)
            return s == state
        try:
            wait_for(check, timeout=timeout, interval=0.05,
                     what='/health "amqp": "%s"' % state)
        except AssertionError as e:
            raise AssertionError("%s (states seen: %r)" % (e, seen))


@pytest.fixture
def amqp_server(request, tmp_path, rabbitmq):
    """Factory: amqp_server(config=None, workers=2, exchange=None,
    connected=True) -> an AmqpServer using the session broker. config is a
    dict {section: {key: value}}; exchange sets [amqp] exchange. With
    connected, waits until /health says "amqp": "connected". Stopped at
    the end of the test; logs go into a failing test's report."""
    started = getattr(request.node, "bagou_servers", None)
    if started is None:
        started = []
        request.node.bagou_servers = started

    def start(config=None, workers=2, exchange=None, connected=True,
              extra_args=()):
        cfg = {k: dict(v) for k, v in (config or {}).items()}
        if exchange is not None:
            cfg.setdefault("amqp", {})["exchange"] = exchange
        srv = AmqpServer(str(tmp_path), rabbitmq.url, config=cfg,
                         workers=workers, extra_args=extra_args,
                         name="bagou%d" % len(started))
        started.append(srv)
        srv.start()
        if connected:
            srv.wait_amqp("connected", timeout=15.0)
        return srv

    yield start
    stop_servers(started)


@pytest.fixture
def publisher(rabbitmq):
    """Factory: publisher(exchange="bagou") -> a connected Publisher;
    every one is closed at the end of the test."""
    made = []

    def make(exchange="bagou"):
        pub = Publisher(rabbitmq, exchange)
        made.append(pub)
        return pub

    yield make
    for pub in made:
        pub.close()


_exchange_seq = [0]


def unique_exchange(prefix="bagou-t"):
    """A fresh exchange name, so tests sharing the broker never see each
    other's broadcasts."""
    _exchange_seq[0] += 1
    return "%s-%d-%d" % (prefix, os.getpid(), _exchange_seq[0])
