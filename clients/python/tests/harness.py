"""Test harness: real `baton serve` processes, a Postgres database per session, and a
TCP proxy that can switch upstreams or blackhole traffic. No mocks of baton.

BATON_BIN           server binary (default <repo>/target/debug/baton)
BATON_MACHINES      machines TOML (default <repo>/examples/machines.toml, else the copy
                    in clients/testdata/machines.toml)
BATON_TEST_PG_URL   admin URL of a Postgres that may CREATE DATABASE
                    (default postgres://postgres@127.0.0.1:5432/test)
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import threading
import uuid
from pathlib import Path
from typing import IO, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[3]
BATON_BIN = Path(os.environ.get("BATON_BIN") or REPO / "target" / "debug" / "baton")
PG_ADMIN_URL = os.environ.get("BATON_TEST_PG_URL", "postgres://postgres@127.0.0.1:5432/test")
READY_TIMEOUT = float(os.environ.get("BATON_READY_TIMEOUT", "30"))


def machines_path() -> Path:
    env = os.environ.get("BATON_MACHINES")
    if env:
        return Path(env)
    example = REPO / "examples" / "machines.toml"
    return example if example.exists() else REPO / "clients" / "testdata" / "machines.toml"


class ServerError(RuntimeError):
    pass


class BatonServer:
    """One `baton serve --listen 127.0.0.1:0`; its address is read from the JSON log
    line `baton serving` on stderr (no polling, no sleeps)."""

    def __init__(self, database_url: str, log_path: Path, heartbeat: str = "1s", args: Sequence[str] = ()) -> None:
        self.database_url = database_url
        self.log_path = log_path
        self.heartbeat = heartbeat
        self.args = list(args)  # more flags: TLS, tokens
        self.addr = ""
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._ready = threading.Event()
        self._reader: Optional[threading.Thread] = None

    def start(self) -> "BatonServer":
        if not BATON_BIN.exists():
            raise ServerError(f"baton binary not found at {BATON_BIN}: build it or set BATON_BIN")
        cmd = [
            str(BATON_BIN), "serve", "--listen", "127.0.0.1:0", "--log-format", "json",
            "--database-url", self.database_url, "--heartbeat", self.heartbeat, "--drain", "2s", *self.args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        log = open(self.log_path, "ab")
        self._reader = threading.Thread(target=self._read_log, args=(self.proc.stderr, log), daemon=True)
        self._reader.start()
        if not self._ready.wait(READY_TIMEOUT) or not self.addr:
            self.kill()
            raise ServerError(f"baton serve did not report 'baton serving':\n{self.log_tail()}")
        return self

    def _read_log(self, stream: IO[bytes], log: IO[bytes]) -> None:
        with log:
            for raw in stream:
                log.write(raw)
                log.flush()
                if not self._ready.is_set():
                    try:
                        fields = json.loads(raw).get("fields", {})
                    except ValueError:
                        continue
                    if fields.get("message") == "baton serving":
                        self.addr = fields["addr"]
                        self._ready.set()
        self._ready.set()  # exited before serving: start() reports it

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> Optional[int]:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        return proc.returncode

    def kill(self) -> Optional[int]:
        return self.stop(signal.SIGKILL)


class Postgres:
    """A fresh database on the shared Postgres, dropped at the end."""

    def __init__(self, admin_url: str = PG_ADMIN_URL) -> None:
        import pg8000.native

        parts = urlsplit(admin_url)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ServerError(f"BATON_TEST_PG_URL must be a loopback address, not {parts.hostname}")
        self._connect = lambda db: pg8000.native.Connection(
            user=parts.username or "postgres",
            password=parts.password,
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5432,
            database=db,
        )
        self._admin_db = parts.path.lstrip("/") or "postgres"
        self.name = "baton_client_" + uuid.uuid4().hex[:12]
        netloc = parts.netloc
        self.url = f"postgres://{netloc}/{self.name}"
        try:
            conn = self._connect(self._admin_db)
        except Exception as err:
            raise ServerError(
                f"Postgres at {admin_url} is unreachable ({err}); start it (on Debian: apt-get install "
                "postgresql && pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start) "
                "or set BATON_TEST_PG_URL"
            ) from None
        try:
            conn.run(f'CREATE DATABASE "{self.name}"')
        finally:
            conn.close()

    def drop(self) -> None:
        conn = self._connect(self._admin_db)
        try:
            conn.run(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            conn.close()


class TcpProxy:
    """A loopback TCP proxy. `upstream` can be switched (new connections go there);
    `blackhole()` makes it swallow every byte in both directions while keeping the
    connections open, as a network partition would. With `tls` the bytes are TLS records,
    passed on as they come; without, the server's are cut at HTTP/2 frames, so that
    `cut_next_response()` can drop one."""

    def __init__(self, upstream: str, *, tls: bool = False) -> None:
        self.upstream = upstream
        self.tls = tls
        self.blackholed = False
        self.cuts = 0
        self._cut_armed = False
        self._lock = threading.Lock()
        self._conns: List[Tuple[socket.socket, socket.socket]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.addr = "127.0.0.1:%d" % self._listener.getsockname()[1]
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def set_upstream(self, upstream: str) -> None:
        with self._lock:
            self.upstream = upstream

    def blackhole(self, on: bool = True) -> None:
        self.blackholed = on

    def cut_next_response(self) -> None:
        """Let requests through; when the server starts its next response (an HTTP/2
        HEADERS or DATA frame on a stream), drop it and reset that connection. The call
        has then been handled -- committed, for a write -- but its answer never arrives."""
        if self.tls:
            raise ValueError("cut_next_response needs plaintext HTTP/2, not TLS")
        self._cut_armed = True

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                upstream = self.upstream
            host, port = upstream.rsplit(":", 1)
            try:
                server = socket.create_connection((host, int(port)), timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.append((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        frames = _FrameSplitter()  # server -> client bytes, split at HTTP/2 frame boundaries
        try:
            while True:
                for key, _ in sel.select():
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    dst: socket.socket = key.data
                    data = src.recv(65536)
                    if not data:
                        return
                    if self.blackholed:
                        continue
                    if src is b and not self.tls:
                        for frame in frames.feed(data):
                            if self._cut_armed and frame[3] in (0, 1) and int.from_bytes(frame[5:9], "big") & 0x7FFFFFFF:
                                self._cut_armed = False
                                self.cuts += 1
                                a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                                return
                            dst.sendall(frame)
                    else:
                        dst.sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for a, b in conns:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class _FrameSplitter:
    """Splits the server's HTTP/2 byte stream into whole frames (9-byte header + body)."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> List[bytes]:
        self.buf += data
        out = []
        while len(self.buf) >= 9:
            size = 9 + int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < size:
                break
            out.append(self.buf[:size])
            self.buf = self.buf[size:]
        return out
