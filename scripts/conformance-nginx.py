#!/usr/bin/env python3
"""Differential HTTP/1 conformance run: nginx (reference) against Gatehouse's
two HTTP/1 engines (`--http1-engine lean` and `--http1-engine pingora`).

Runs tests/conformance/requests.json (raw client requests that attack a
reverse proxy) and tests/conformance/responses.json (raw upstream responses)
against each target, and writes a markdown table between
`<!-- conformance:begin -->` and `<!-- conformance:end -->` in --out.

Usage: scripts/conformance-nginx.py [--gatehouse target/debug/gatehouse] [--out docs/security.md]

Standard library only. Each target gets its own recording upstream, so the
three targets run side by side and "app got" counts never mix.

Corpus format (see the JSON files):
  requests:  name, family, note, request (Latin-1: one char = one byte),
             expect (list: "200", "4xx", "any", ...; [] = nothing, then close),
             optional upstream (requests the app must receive; default: the
             number of "200" entries, plus up to one more per "any"/"2xx"
             entry), timeout_ok, repeat {marker, byte, count}.
  responses: name, family, note, response (Latin-1), close_after, expect
             (one status or class or "any"), optional body (checked when the
             client gets a complete 2xx).
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN = "<!-- conformance:begin -->"
END = "<!-- conformance:end -->"
KEY = b"conformance-key-1"
IDLE = 3.0            # a case ends after this long without a byte
IDLE_TIMEOUT_OK = 2.0  # ... or this long when the case allows a wait
IDLE_RESPONSES = 5.0   # response cases (the gateway's upstream read timeout is 2 s)
SURPLUS = 0.3          # how long to keep reading once the expected responses arrived
TRANSCRIPT = threading.local()  # per thread: the bytes each exchange received (for --keep)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def latin1(s):
    return s.encode("latin-1")


# --------------------------------------------------------------------------
# Upstreams


def read_head(conn, buf):
    """Read until the end of a head (CRLFCRLF, or LFLF leniently); returns (head, rest) or (None, buf)."""
    while True:
        i = buf.find(b"\r\n\r\n")
        j = buf.find(b"\n\n")
        if i >= 0 and (j < 0 or i <= j + 1):
            return buf[:i + 4], buf[i + 4:]
        if j >= 0:
            return buf[:j + 2], buf[j + 2:]
        if len(buf) > 1 << 20:
            return None, buf
        chunk = conn.recv(65536)
        if not chunk:
            return None, buf
        buf += chunk


def head_fields(head):
    lines = re.split(rb"\r?\n", head)
    fields = []
    for line in lines[1:]:
        if not line:
            continue
        if b":" in line:
            n, v = line.split(b":", 1)
            fields.append((n.strip().lower(), v.strip()))
    return lines[0], fields


def read_exact(conn, buf, n):
    while len(buf) < n:
        chunk = conn.recv(65536)
        if not chunk:
            raise EOFError
        buf += chunk
    return buf[:n], buf[n:]


def read_line(conn, buf):
    while b"\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            raise EOFError
        buf += chunk
    i = buf.index(b"\n")
    return buf[:i + 1], buf[i + 1:]


def read_chunked(conn, buf):
    body = b""
    while True:
        line, buf = read_line(conn, buf)
        size = int(line.split(b";")[0].strip() or b"x", 16)
        if size == 0:
            while True:
                line, buf = read_line(conn, buf)
                if line.strip() == b"":
                    return body, buf
        data, buf = read_exact(conn, buf, size + 2)
        body += data[:size]


class Server(threading.Thread):
    """A threaded TCP server on 127.0.0.1:free port; handle(conn) per connection."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.conns = set()
        self.lock = threading.Lock()

    def run(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.handle(conn)
        except (OSError, EOFError, ValueError):
            pass
        finally:
            with self.lock:
                self.conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def stop(self):
        self.stopping = True
        try:
            self.sock.close()
        except OSError:
            pass
        with self.lock:
            for c in list(self.conns):
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class Recorder(Server):
    """The app: answers every request 200 "{}", keep-alive; records each head it got.
    Frames bodies as a lenient origin would: Transfer-Encoding (chunked) over Content-Length."""

    def __init__(self):
        super().__init__()
        self.got = []  # (head bytes, body bytes)

    def count(self):
        with self.lock:
            return len(self.got)

    def since(self, n):
        with self.lock:
            return list(self.got[n:])

    def handle(self, conn):
        buf = b""
        while True:
            head, buf = read_head(conn, buf)
            if head is None:
                return
            _, fields = head_fields(head)
            te = [v for n, v in fields if n == b"transfer-encoding"]
            cl = [v for n, v in fields if n == b"content-length"]
            body = b""
            try:
                if te and te[-1].split(b",")[-1].strip().lower() == b"chunked":
                    body, buf = read_chunked(conn, buf)
                elif cl:
                    body, buf = read_exact(conn, buf, int(cl[0].split(b",")[0]))
            except ValueError:
                with self.lock:
                    self.got.append((head, b""))
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            with self.lock:
                self.got.append((head, body))
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nX-Recorder: 1\r\n\r\n{}")
            if any(n == b"connection" and b"close" in v.lower() for n, v in fields):
                return


class Scripted(Server):
    """Answers GET /case/<name> with that case's exact bytes."""

    def __init__(self, cases):
        super().__init__()
        self.cases = {c["name"]: c for c in cases}

    def handle(self, conn):
        buf = b""
        while True:
            head, buf = read_head(conn, buf)
            if head is None:
                return
            line, fields = head_fields(head)
            cl = [v for n, v in fields if n == b"content-length"]
            if cl:
                _, buf = read_exact(conn, buf, int(cl[0]))
            parts = line.split(b" ")
            target = parts[1].decode("latin-1") if len(parts) > 1 else ""
            name = target.split("?")[0].rsplit("/", 1)[-1]
            c = self.cases.get(name) if target.startswith("/case/") else None
            if c is None:
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                continue
            conn.sendall(latin1(c["response"]))
            if c.get("close_after"):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return


# --------------------------------------------------------------------------
# Client side: a small HTTP/1 response parser


class Response:
    def __init__(self, status, fields, body, complete=True, code=None):
        self.status = status
        self.code = code or str(status)
        self.fields = fields
        self.body = body
        self.complete = complete

    def field(self, name):
        return [v for n, v in self.fields if n == name]


class ResponseParser:
    """Incremental: feed bytes, take complete responses; finish() at EOF."""

    def __init__(self):
        self.buf = b""
        self.garbage = False
        self.switched = False

    def feed(self, data):
        self.buf += data

    def _head(self):
        if self.garbage or self.switched:
            return None
        if len(self.buf) >= 5 and not self.buf.startswith(b"HTTP/"):
            self.garbage = True
            return None
        i = self.buf.find(b"\r\n\r\n")
        j = self.buf.find(b"\n\n")
        if i < 0 and j < 0:
            return None
        end = i + 4 if (i >= 0 and (j < 0 or i <= j + 1)) else j + 2
        head = self.buf[:end]
        line, fields = head_fields(head)
        m = re.match(rb"HTTP/\d\.\d (\d{3})", line)
        if not m:
            self.garbage = True
            return None
        return m.group(1).decode(), fields, end

    def take(self):
        h = self._head()
        if h is None:
            return None
        code, fields, end = h
        status = int(code)
        rest = self.buf[end:]
        te = [v for n, v in fields if n == b"transfer-encoding"]
        cl = [v for n, v in fields if n == b"content-length"]
        if 100 <= status < 200 or status in (204, 304):
            self.buf = rest
            if status == 101:
                self.switched = True
            return Response(status, fields, b"", code=code)
        if te and te[-1].split(b",")[-1].strip().lower() == b"chunked":
            body, used = self._chunked(rest)
            if used is None:
                return None
            self.buf = rest[used:]
            return Response(status, fields, body, code=code)
        if cl:
            v = cl[0].split(b",")[0].strip()
            if not v.isdigit():
                self.garbage = True
                return None
            n = int(v)
            if len(rest) < n:
                return None
            self.buf = rest[n:]
            return Response(status, fields, rest[:n], code=code)
        return None  # until close

    @staticmethod
    def _chunked(data):
        body = b""
        pos = 0
        while True:
            nl = data.find(b"\n", pos)
            if nl < 0:
                return None, None
            try:
                size = int(data[pos:nl].split(b";")[0].strip(), 16)
            except ValueError:
                return body, None
            pos = nl + 1
            if size == 0:
                while True:
                    nl = data.find(b"\n", pos)
                    if nl < 0:
                        return None, None
                    line = data[pos:nl]
                    pos = nl + 1
                    if line.strip() == b"":
                        return body, pos
            if len(data) < pos + size + 2:
                return None, None
            body += data[pos:pos + size]
            pos += size
            nl = data.find(b"\n", pos)
            if nl < 0:
                return None, None
            pos = nl + 1

    def finish(self):
        """At EOF: an until-close body completes; anything else pending is truncated."""
        if self.garbage or self.switched or not self.buf:
            return None
        h = self._head()
        if h is None:
            return "garbage" if self.buf else None
        code, fields, end = h
        rest = self.buf[end:]
        self.buf = b""
        te = [v for n, v in fields if n == b"transfer-encoding"]
        cl = [v for n, v in fields if n == b"content-length"]
        if not te and not cl:
            return Response(int(code), fields, rest, code=code)
        return Response(int(code), fields, rest, complete=False, code=code)


def exchange(port, data, n_expect, idle, sock=None):
    """Send data, read responses. Returns (responses, interim, end, sock).
    end: 'eof', 'reset', 'timeout', 'done' (expected count reached and the
    surplus window passed with the connection still open), or 'connect'."""
    if sock is None:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError:
            return [], [], "connect", None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.sendall(data)
    except OSError:
        pass
    parser = ResponseParser()
    raw = bytearray()
    finals, interim = [], []
    last = time.monotonic()
    surplus_until = None
    end = None
    while True:
        now = time.monotonic()
        if surplus_until is not None and now >= surplus_until:
            end = "done"
            break
        wait = idle - (now - last)
        if surplus_until is not None:
            wait = min(wait, surplus_until - now)
        if wait <= 0:
            end = "timeout"
            break
        sock.settimeout(wait)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            end = "reset"
            break
        if not chunk:
            end = "eof"
            break
        last = time.monotonic()
        raw += chunk
        parser.feed(chunk)
        while True:
            r = parser.take()
            if r is None:
                break
            if 100 <= r.status < 200 and r.status != 101:
                interim.append(r)
            else:
                finals.append(r)
        if parser.garbage and "garbage" not in finals:
            finals.append("garbage")
        if len(finals) >= n_expect and n_expect > 0 and surplus_until is None:
            surplus_until = time.monotonic() + SURPLUS
    if end in ("eof", "reset"):
        r = parser.finish()
        if r is not None:
            finals.append(r)
    if end != "done":
        try:
            sock.close()
        except OSError:
            pass
        sock = None
    if hasattr(TRANSCRIPT, "items"):
        TRANSCRIPT.items.append(bytes(raw))
    return finals, interim, end, sock


def token(r):
    if isinstance(r, str):
        return r
    return r.code + ("" if r.complete else "!")


def status_matches(exp, got):
    if got == "garbage":
        return False
    if exp == "any":
        return True
    if got.endswith("!"):
        return False
    if exp.endswith("xx"):
        return got[0] == exp[0]
    return got == exp


# --------------------------------------------------------------------------
# Invariants on what the app received


def app_reads_admin(target, iis):
    """How a lenient app (Tomcat-, IIS-like) reads a path: is it /admin?"""
    path = target.split("?")[0].split("#")[0]
    if "://" in path:
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    try:
        path = urllib.parse.unquote(urllib.parse.unquote(path, encoding="latin-1"), encoding="latin-1")
    except Exception:
        return False
    path = path.replace("\\", "/")
    out = []
    for seg in path.split("/"):
        seg = seg.split(";")[0]
        if iis:
            seg = seg.rstrip(". ").lower()
        if seg in ("", "."):
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    return out == ["admin"]


def invariants(case_bytes, got):
    """Problems with what the app received during one case."""
    problems = []
    iis = b"iis.test" in case_bytes
    for head, _ in got:
        line, fields = head_fields(head)
        names = {n for n, _ in fields}
        if b"content-length" in names and b"transfer-encoding" in names:
            problems.append("CL+TE to app")
        if b"x-hop" in names:
            problems.append("hop field to app")
        parts = line.split(b" ")
        target = parts[1].decode("latin-1") if len(parts) > 1 else ""
        if b"x-api-key" in names:
            problems.append("key header to app")
        query = target.partition("?")[2]
        for param in query.split("&"):
            pname = urllib.parse.unquote(param.partition("=")[0])
            if pname == "api_key":
                problems.append("key param to app")
        if app_reads_admin(target, iis):
            problems.append("/admin to app")
    return sorted(set(problems))


# --------------------------------------------------------------------------
# Targets


class Target:
    def __init__(self, key, label):
        self.key = key
        self.label = label
        self.port = None
        self.proc = None
        self.recorder = None
        self.error = None
        self.warmup = ""
        self.log = None
        self.transcripts = None

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.recorder is not None:
            self.recorder.stop()


def wait_port(port, within, proc=None):
    start = time.monotonic()
    while time.monotonic() - start < within:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def simple_get(port, path, host, timeout=3.0):
    data = ("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, host)).encode()
    finals, _, _, sock = exchange(port, data, 1, timeout)
    if sock is not None:
        sock.close()
    return token(finals[0]) if finals else "none"


def ensure_nginx():
    for cand in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if cand and os.path.exists(cand):
            return cand
    log("nginx not found: installing it with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
    for pkg in ("nginx-light", "nginx"):
        pol = subprocess.run(["apt-cache", "policy", pkg], capture_output=True, text=True, env=env).stdout
        if "Candidate:" in pol and "Candidate: (none)" not in pol:
            if subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", pkg], env=env).returncode == 0:
                break
    for cand in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if cand and os.path.exists(cand):
            return cand
    raise SystemExit("could not install nginx")


NGINX_CONF = """# Written by scripts/conformance-nginx.py: the conformance estate on nginx.
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    # Gatehouse caps a head line at 32 KiB; nginx's default is 8k a line.
    large_client_header_buffers 4 32k;
    upstream recorder {{ server 127.0.0.1:{rec}; keepalive 16; }}
    upstream scripted {{ server 127.0.0.1:{scr}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port}{http2} default_server;
        server_name _;
        return 404;
    }}
    server {{
        listen 127.0.0.1:{port}{http2};
        server_name conf.test *.wild.test iis.test keys.test tenant.test jwt.test;
        location / {{
            proxy_pass http://recorder;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_connect_timeout 1s;
            proxy_read_timeout 5s;
        }}
    }}
    server {{
        listen 127.0.0.1:{port}{http2};
        server_name resp.test;
        location / {{
            proxy_pass http://scripted;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_connect_timeout 1s;
            proxy_read_timeout 2s;
        }}
    }}
}}
"""


def start_nginx(t, nginx, work, scripted, http2=False):
    """nginx in front of a new recorder; `http2`: the listener speaks cleartext HTTP/2 only."""
    d = os.path.join(work, "nginx")
    os.makedirs(d)
    os.chmod(work, 0o755)
    os.chmod(d, 0o755)
    t.recorder = Recorder()
    t.recorder.start()
    t.port = free_port()
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(NGINX_CONF.format(d=d, rec=t.recorder.port, scr=scripted.port, port=t.port,
                                  http2=" http2" if http2 else ""))
    t.log = os.path.join(d, "error.log")
    out = open(os.path.join(d, "stderr.log"), "w")
    t.proc = subprocess.Popen([nginx, "-p", d, "-c", os.path.join(d, "nginx.conf"), "-g", "daemon off;"],
                              stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if not wait_port(t.port, 10, t.proc):
        t.error = "nginx did not start (see %s)" % os.path.join(d, "stderr.log")


def start_gatehouse(t, binary, engine, work, scripted, extra=()):
    """Gatehouse on `engine` in front of a new recorder, with `extra` serve arguments."""
    d = os.path.join(work, "gatehouse-" + engine)
    pol = os.path.join(d, "policies")
    shutil.copytree(os.path.join(ROOT, "tests", "conformance", "policy"), pol)
    os.makedirs(os.path.join(pol, "keys"))
    shutil.copy(os.path.join(ROOT, "policies", "keys", "corp-idp.jwks.json"),
                os.path.join(pol, "keys", "idp.jwks.json"))
    t.recorder = Recorder()
    t.recorder.start()
    for name in os.listdir(pol):
        p = os.path.join(pol, name)
        if name.endswith((".yaml", ".yml")):
            with open(p) as f:
                text = f.read()
            text = text.replace("{{UPSTREAM}}", "127.0.0.1:%d" % t.recorder.port)
            text = text.replace("{{SCRIPTED}}", "127.0.0.1:%d" % scripted.port)
            with open(p, "w") as f:
                f.write(text)
    t.port = free_port()
    admin = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
    env.setdefault("RUST_LOG", "info,pingora_core::connectors=off")
    t.log = os.path.join(d, "gatehouse.log")
    out = open(t.log, "w")
    t.proc = subprocess.Popen(
        [binary, "serve", "--policies", pol, "--listen", "127.0.0.1:%d" % t.port,
         "--admin-listen", "127.0.0.1:%d" % admin, "--no-watch", "--http1-engine", engine,
         "--drain-timeout", "1", "--spool-dir", os.path.join(d, "spool")] + list(extra),
        cwd=d, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    start = time.monotonic()
    while time.monotonic() - start < 30:
        if t.proc.poll() is not None:
            t.error = "gatehouse (%s) exited with %s (see %s)" % (engine, t.proc.returncode, t.log)
            return
        if wait_port(admin, 0.2) and simple_get(admin, "/readyz", "admin", 1.0) == "200":
            break
        time.sleep(0.1)
    else:
        t.error = "gatehouse (%s) not ready within 30 s (see %s)" % (engine, t.log)
        return
    # the proxy listener answers once the policy is loaded
    start = time.monotonic()
    while time.monotonic() - start < 15:
        if simple_get(t.port, "/__none", "conf.test", 2.0) not in ("none", "connect"):
            return
        time.sleep(0.1)
    t.error = "gatehouse (%s) listener does not answer (see %s)" % (engine, t.log)


# --------------------------------------------------------------------------
# Running the corpora


def request_bytes(c):
    data = latin1(c["request"])
    rep = c.get("repeat")
    if rep:
        data = data.replace(latin1(rep["marker"]), latin1(rep["byte"]) * int(rep["count"]), 1)
    return data


def expected_for(t, c):
    """The case's expectation for target t: Pingora's engine has its own
    where the corpus gives one (`pingora`, with the reason in `pingora_why`)."""
    return c["pingora"] if t.key == "pingora" and "pingora" in c else c["expect"]


def expected_upstream(c, expect):
    if "upstream" in c:
        return c["upstream"], c["upstream"]
    lo = sum(1 for e in expect if e == "200")
    hi = lo + sum(1 for e in expect if e in ("any", "2xx"))
    return lo, hi


def run_request_case(t, c):
    data = request_bytes(c)
    expect = expected_for(t, c)
    idle = IDLE_TIMEOUT_OK if c.get("timeout_ok") else IDLE
    before = t.recorder.count()
    finals, interim, end, sock = exchange(t.port, data, len(expect), idle)
    if sock is not None:
        sock.close()
    time.sleep(0.03)
    got = t.recorder.since(before)
    toks = [token(r) for r in finals]
    ok = False
    if end == "timeout" and c.get("timeout_ok") and (len(toks) < len(expect) or not expect) and \
            all(status_matches(e, g) for e, g in zip(expect, toks)):
        ok = True
    elif expect == ["any"] and not toks and end in ("eof", "reset"):
        ok = True  # "any" is anything but a hang or unparseable bytes
    elif not expect:
        ok = not toks and end in ("eof", "reset")
    elif len(toks) == len(expect):
        ok = all(status_matches(e, g) for e, g in zip(expect, toks))
    lo, hi = expected_upstream(c, expect)
    up_ok = lo <= len(got) <= hi
    shown = " ".join(["(%d)" % r.status for r in interim] + toks)
    if not toks:
        shown = (shown + " " if shown else "") + {"eof": "close", "done": "open"}.get(end, end)
    elif end == "timeout" and len(toks) < len(expect):
        shown += " timeout"
    problems = invariants(data, got)
    return {"shown": shown.strip(), "ok": ok and up_ok and not problems, "status_ok": ok, "up": len(got),
            "up_ok": up_ok, "problems": problems}


def run_response_case(t, c):
    data = ("GET /case/%s HTTP/1.1\r\nHost: resp.test\r\n\r\n" % c["name"]).encode()
    finals, interim, end, sock = exchange(t.port, data, 1, IDLE_RESPONSES)
    problems = []
    first = finals[0] if finals else None
    expect = expected_for(t, c)
    ok = status_matches(expect, token(first)) if first is not None else \
        (expect == "any" and end in ("eof", "reset"))
    if first is None:
        shown = {"eof": "close", "done": "open"}.get(end, end)
    else:
        shown = token(first)
    if isinstance(first, Response):
        if first.field(b"content-length") and first.field(b"transfer-encoding"):
            problems.append("CL+TE to client")
            ok = False
        if "body" in c and 200 <= first.status < 300 and first.complete:
            if first.body != latin1(c["body"]):
                problems.append("body %r" % first.body[:24])
                ok = False
    if len(finals) > 1:
        problems.append("surplus " + " ".join(token(r) for r in finals[1:]))
        ok = False
    if end == "timeout":
        problems.append("hang")
        ok = False
    if sock is not None and c["name"] != "plain":
        nf, _, nend, nsock = exchange(t.port, b"GET /case/plain HTTP/1.1\r\nHost: resp.test\r\n\r\n", 1, IDLE_RESPONSES, sock)
        if nsock is not None:
            nsock.close()
        n = nf[0] if nf else None
        if isinstance(n, Response) and n.status == 200 and n.body == b"plain" and len(nf) == 1:
            shown += " · next 200"
        else:
            nshown = " ".join(token(r) for r in nf) or {"eof": "close"}.get(nend, nend)
            if isinstance(n, Response) and n.status == 200 and n.body != b"plain":
                nshown += " body %r" % n.body[:24]
            shown += " · next " + nshown
            ok = False
    elif sock is not None:
        sock.close()
    if interim:
        shown = " ".join("(%d)" % r.status for r in interim) + " " + shown
    return {"shown": shown, "ok": ok, "problems": problems}


def save_transcript(t, kind, c, sent):
    if not t.transcripts:
        return
    with open(os.path.join(t.transcripts, "%s-%s.txt" % (kind, c["name"])), "wb") as f:
        f.write(b"=== sent\n" + sent[:4000] + b"\n")
        for i, raw in enumerate(TRANSCRIPT.items):
            f.write(b"=== received (exchange %d, %d bytes)\n" % (i + 1, len(raw)) + raw[:4000] + b"\n")


def run_target(t, requests, responses, results):
    res = {"requests": {}, "responses": {}}
    for c in requests:
        TRANSCRIPT.items = []
        try:
            res["requests"][c["name"]] = run_request_case(t, c)
            save_transcript(t, "request", c, request_bytes(c))
        except Exception as e:  # keep going: one broken case must not stop the run
            res["requests"][c["name"]] = {"shown": "error: %s" % e, "ok": False, "status_ok": False, "up": 0,
                                          "up_ok": False, "problems": []}
    for c in responses:
        TRANSCRIPT.items = []
        try:
            res["responses"][c["name"]] = run_response_case(t, c)
            save_transcript(t, "response", c, latin1(c["response"]))
        except Exception as e:
            res["responses"][c["name"]] = {"shown": "error: %s" % e, "ok": False, "problems": []}
    results[t.key] = res


# --------------------------------------------------------------------------
# Output


POLICY_FAMILIES = ("path", "api-key", "body")


def is_policy_case(c):
    return c["family"] in POLICY_FAMILIES or any(e in ("429", "401") for e in c["expect"]) or \
        " /orders" in c["request"].split("\r\n")[0]


def cell(r):
    if r is None:
        return "—"
    s = r["shown"].replace("|", "\\|")
    return s if r["ok"] else s + " ✗"


def markdown(targets, requests, responses, results, summary):
    keys = [t.key for t in targets]
    lines = [
        "Generated by `scripts/conformance-nginx.py` from `tests/conformance/requests.json` and "
        "`tests/conformance/responses.json`. Each cell is what the client received (statuses in order; "
        "`(100)` an interim response; `close`/`timeout` when nothing came); ✗ marks a result that differs from "
        "the corpus's expectation (the statuses, the number of requests the app got — `*` when that is off — or an "
        "invariant in the notes: no API key, no field named by Connection, no CL+TE pair and no second /admin may "
        "reach the app). nginx has no per-route "
        "policy (no /admin limit, API keys or schemas), so its policy cases differ by design.",
        "",
    ]
    lines += ["| target | requests as expected | responses as expected |", "| --- | --- | --- |"]
    for row in summary:
        lines.append("| %s | %s | %s |" % row)
    lines += ["", "#### Requests", "",
              "| case | family | expected | nginx | Gatehouse lean | Gatehouse pingora | app got (n/l/p) | notes |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in requests:
        cells, ups, notes = [], [], []
        for k in ("nginx", "lean", "pingora"):
            r = results.get(k, {}).get("requests", {}).get(c["name"]) if k in keys else None
            cells.append(cell(r))
            ups.append("—" if r is None else str(r["up"]) + ("" if r["up_ok"] else "*"))
            if r and r["problems"]:
                notes.append("%s: %s" % (k, ", ".join(r["problems"])))
        exp = " ".join(c["expect"]) or "nothing"
        if c.get("timeout_ok"):
            exp += " (or wait)"
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            c["name"], c["family"], exp, cells[0], cells[1], cells[2], "/".join(ups), "; ".join(notes)))
    lines += ["", "#### Responses", "",
              "Each case is `GET /case/NAME` answered with the case's bytes; `next` is a follow-up "
              "`GET /case/plain` on the same client connection (when it stayed open), which must get 200 `plain`.",
              "",
              "| case | family | expected | nginx | Gatehouse lean | Gatehouse pingora | notes |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for c in responses:
        cells, notes = [], []
        for k in ("nginx", "lean", "pingora"):
            r = results.get(k, {}).get("responses", {}).get(c["name"]) if k in keys else None
            cells.append(cell(r))
            if r and r["problems"]:
                notes.append("%s: %s" % (k, ", ".join(r["problems"])))
        exp = c["expect"] + (" `%s`" % c["body"] if "body" in c else "")
        lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            c["name"], c["family"], exp, cells[0], cells[1], cells[2],
            "; ".join(notes).replace("|", "\\|")))
    return "\n".join(lines) + "\n"


def write_out(path, table):
    if not os.path.isabs(path):
        path = os.path.join(ROOT, path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    else:
        text = "# Security\n\n## HTTP/1 conformance\n\n%s\n%s\n" % (BEGIN, END)
    if BEGIN in text and END in text and text.index(BEGIN) < text.index(END):
        pre = text[:text.index(BEGIN) + len(BEGIN)]
        post = text[text.index(END):]
        text = pre + "\n" + table + post
    else:
        text = text.rstrip("\n") + "\n\n## HTTP/1 conformance\n\n%s\n%s%s\n" % (BEGIN, table, END)
    with open(path, "w") as f:
        f.write(text)
    return path


# --------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gatehouse", default="target/debug/gatehouse", help="gatehouse binary (skipped if missing)")
    ap.add_argument("--out", default="docs/security.md", help="markdown file whose conformance markers get the tables")
    ap.add_argument("--requests", default="tests/conformance/requests.json")
    ap.add_argument("--responses", default="tests/conformance/responses.json")
    ap.add_argument("--targets", default="nginx,lean,pingora", help="comma-separated subset of nginx,lean,pingora")
    ap.add_argument("--only", default="", help="regex: run only cases whose name matches")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    args = ap.parse_args()

    def rel(p):
        return p if os.path.isabs(p) else os.path.join(ROOT, p)

    with open(rel(args.requests)) as f:
        requests = json.load(f)
    with open(rel(args.responses)) as f:
        responses = json.load(f)
    names = [c["name"] for c in requests]
    assert len(names) == len(set(names)), "duplicate request case names"
    assert len({c["name"] for c in responses}) == len(responses), "duplicate response case names"
    if args.only:
        requests = [c for c in requests if re.search(args.only, c["name"])]
        responses = [c for c in responses if re.search(args.only, c["name"]) or c["name"] == "plain"]
    wanted = [x.strip() for x in args.targets.split(",") if x.strip()]

    work = tempfile.mkdtemp(prefix="conformance-")
    scripted = Scripted(responses if any(c["name"] == "plain" for c in responses) else
                        responses + [{"name": "plain", "response": "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain"}])
    scripted.start()
    targets = []
    try:
        if "nginx" in wanted:
            t = Target("nginx", "nginx")
            targets.append(t)
            start_nginx(t, ensure_nginx(), work, scripted)
        binary = rel(args.gatehouse)
        for engine in ("lean", "pingora"):
            if engine not in wanted:
                continue
            if not os.path.exists(binary):
                log("no gatehouse binary at %s: Gatehouse columns skipped" % binary)
                break
            t = Target(engine, "Gatehouse " + engine)
            targets.append(t)
            start_gatehouse(t, binary, engine, work, scripted)
        for t in targets:
            if t.error:
                log(t.error)
            elif args.keep:
                t.transcripts = os.path.join(work, "transcripts", t.key)
                os.makedirs(t.transcripts)
        live = [t for t in targets if not t.error]
        # the warm-up: /admin on each app admits one request an hour
        for t in live:
            t.warmup = "%s %s" % (simple_get(t.port, "/admin", "conf.test"), simple_get(t.port, "/admin", "iis.test"))
            log("%s: warm-up GET /admin conf.test, iis.test -> %s" % (t.label, t.warmup))
        results = {}
        threads = [threading.Thread(target=run_target, args=(t, requests, responses, results)) for t in live]
        started = time.monotonic()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        log("ran %d request and %d response cases on %d targets in %.0f s" % (
            len(requests), len(responses), len(live), time.monotonic() - started))

        summary = []
        for t in targets:
            if t.key not in results:
                summary.append((t.label, "did not run: " + (t.error or "?"), ""))
                continue
            rq = results[t.key]["requests"]
            rs = results[t.key]["responses"]
            n_ok = sum(1 for c in requests if rq[c["name"]]["ok"])
            framing = [c for c in requests if not is_policy_case(c)]
            f_ok = sum(1 for c in framing if rq[c["name"]]["ok"])
            s_ok = sum(1 for c in responses if rs[c["name"]]["ok"])
            summary.append((t.label, "%d / %d (framing and parsing only: %d / %d)" % (n_ok, len(requests), f_ok, len(framing)),
                            "%d / %d" % (s_ok, len(responses))))
        table = markdown(live, requests, responses, results, summary)
        path = write_out(args.out, table)
        print("wrote %s" % path)
        for label, rq, rs in summary:
            print("%-18s requests %s; responses %s" % (label, rq, rs))
        for t in live:
            bad = [c["name"] for c in requests if not results[t.key]["requests"][c["name"]]["ok"]]
            print("%s: %d request cases differ: %s" % (t.label, len(bad), " ".join(bad)))
            bad = [c["name"] for c in responses if not results[t.key]["responses"][c["name"]]["ok"]]
            print("%s: %d response cases differ: %s" % (t.label, len(bad), " ".join(bad)))
    finally:
        for t in targets:
            t.stop()
        scripted.stop()
        if args.keep:
            log("work directory kept: %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
