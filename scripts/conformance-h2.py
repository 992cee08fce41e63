#!/usr/bin/env python3
"""Differential HTTP/2 conformance run: nginx (reference) against Gatehouse's
HTTP/2 listener (h2c, on both HTTP/1 engines' listeners).

Runs tests/conformance/h2.json with a raw HTTP/2 client (the `h2` package,
with its own checks of what it sends switched off, so it sends what
well-behaved clients refuse to) against each target, each in front of its
own recording upstream, and writes a markdown table between
`<!-- h2-conformance:begin -->` and `<!-- h2-conformance:end -->` in --out.

Usage: scripts/conformance-h2.py [--gatehouse target/debug/gatehouse] [--out docs/security.md]

Installs the `h2` package with pip when it is missing. Reuses the upstreams
and the nginx/Gatehouse launchers of scripts/conformance-nginx.py.
"""

import argparse
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN = "<!-- h2-conformance:begin -->"
END = "<!-- h2-conformance:end -->"

try:
    import h2.config
    import h2.connection
    import h2.events
except ImportError:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "h2"], check=True)
    import h2.config
    import h2.connection
    import h2.events

spec = importlib.util.spec_from_file_location("conformance_nginx", os.path.join(ROOT, "scripts", "conformance-nginx.py"))
h1 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(h1)


def exchange(port, case, within=5.0):
    """Send one case on a new connection; ("200" | "reset" | "goaway" | "close" | "timeout")."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=within)
    config = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                       validate_outbound_headers=False,
                                       normalize_outbound_headers=False,
                                       validate_inbound_headers=False)
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    headers = [(b":method", case["method"].encode()), (b":scheme", b"http"),
               (b":authority", case["authority"].encode()), (b":path", case["path"].encode("latin-1"))]
    headers += [(n.encode(), v.encode("latin-1")) for n, v in case["headers"]]
    body = case.get("body")
    conn.send_headers(1, headers, end_stream=body is None)
    sock.sendall(conn.data_to_send())
    if body is not None:
        time.sleep(case.get("body_delay_ms", 0) / 1000)
        try:
            conn.send_data(1, body.encode("latin-1"), end_stream=True)
            sock.sendall(conn.data_to_send())
        except Exception:
            pass  # the stream was answered or reset already
    deadline = time.monotonic() + within
    status = None
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            data = sock.recv(65536)
            if not data:
                return status or "close"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == 1:
                    status = dict(ev.headers).get(b":status", b"?").decode()
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == 1:
                    return status or "reset"
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == 1:
                    return status
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    return status or "goaway"
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
    except socket.timeout:
        pass
    except OSError:
        return status or "close"
    finally:
        sock.close()
    return status or "timeout"


def matches(want, got):
    # A stream error or a 4xx refuses alike: the app got nothing either way.
    if want == "reset":
        return got in ("reset", "goaway", "close") or got.startswith("4")
    if want.endswith("xx"):
        return len(got) == 3 and got[0] == want[0]
    return want == got


def run(target, cases):
    rows = {}
    for c in cases:
        before = target.recorder.count()
        got = exchange(target.port, c)
        time.sleep(0.05)
        seen = target.recorder.since(before)
        problems = []
        for name, want in c.get("app_headers", {}).items():
            for head, _ in seen[:1]:
                line, fields = h1.head_fields(head)
                if name == ":target":
                    have = [line.split(b" ")[1].decode("latin-1")] if b" " in line else []
                else:
                    have = [v.decode("latin-1") for n, v in fields if n == name.encode()]
                if have != want:
                    problems.append("app got %s: %s" % (name, have))
        ok = matches(c["expect"], got) and len(seen) == c["upstream"] and not problems
        rows[c["name"]] = {"got": got, "up": len(seen), "ok": ok, "problems": problems}
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gatehouse", default="target/debug/gatehouse")
    ap.add_argument("--out", default="docs/security.md")
    args = ap.parse_args()
    with open(os.path.join(ROOT, "tests", "conformance", "h2.json")) as f:
        cases = json.load(f)
    work = tempfile.mkdtemp(prefix="conformance-h2-")
    scripted = h1.Scripted([{"name": "plain", "response": "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain"}])
    scripted.start()
    targets = []
    try:
        t = h1.Target("nginx", "nginx")
        targets.append(t)
        h1.start_nginx(t, h1.ensure_nginx(), work, scripted, http2=True)
        binary = args.gatehouse if os.path.isabs(args.gatehouse) else os.path.join(ROOT, args.gatehouse)
        for engine in ("lean", "pingora"):
            t = h1.Target(engine, "Gatehouse h2c (%s listener)" % engine)
            targets.append(t)
            h1.start_gatehouse(t, binary, engine, work, scripted, extra=["--h2c"])
        results = {}
        for t in targets:
            if t.error:
                raise SystemExit(t.error)
            results[t.key] = run(t, cases)
            good = sum(r["ok"] for r in results[t.key].values())
            print("%s: %d/%d as expected" % (t.label, good, len(cases)), file=sys.stderr)
        nginx_v = subprocess.run([h1.ensure_nginx(), "-v"], capture_output=True, text=True).stderr.strip()
        lines = ["Generated by `scripts/conformance-h2.py` from `tests/conformance/h2.json` (%s, cleartext "
                 "HTTP/2 with prior knowledge; the same cases run over TLS in the test suite). Each cell is what "
                 "the client got (a status, or `reset` for a stream reset) and how many requests reached the app; "
                 "✗ marks a difference from the corpus. nginx has no policy (no header-keyed limit, JWT or "
                 "schema), so its policy rows differ by design." % nginx_v, "",
                 "| target | cases as expected |", "| --- | --- |"]
        for t in targets:
            good = sum(r["ok"] for r in results[t.key].values())
            lines.append("| %s | %d/%d |" % (t.label, good, len(cases)))
        lines += ["", "| case | family | expected (app got) | nginx | Gatehouse lean | Gatehouse pingora |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for c in cases:
            cells = []
            for t in targets:
                r = results[t.key][c["name"]]
                cell = "%s (%d)" % (r["got"], r["up"])
                if r["problems"]:
                    cell += " " + "; ".join(r["problems"]).replace("|", "\\|")
                cells.append(cell if r["ok"] else cell + " ✗")
            lines.append("| %s | %s | %s (%d) | %s |" % (c["name"], c["family"], c["expect"], c["upstream"],
                                                        " | ".join(cells)))
        table = "\n".join(lines) + "\n"
        path = args.out if os.path.isabs(args.out) else os.path.join(ROOT, args.out)
        with open(path) as f:
            text = f.read()
        if BEGIN in text and END in text:
            text = text[:text.index(BEGIN) + len(BEGIN)] + "\n" + table + text[text.index(END):]
        else:
            text = text.rstrip("\n") + "\n\n## HTTP/2 conformance\n\n%s\n%s%s\n" % (BEGIN, table, END)
        with open(path, "w") as f:
            f.write(text)
        print("wrote %s" % path, file=sys.stderr)
    finally:
        for t in targets:
            t.stop()
        scripted.stop()


if __name__ == "__main__":
    main()
