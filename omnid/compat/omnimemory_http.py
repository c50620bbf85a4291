"""OmniMemory's API over HTTP: a loopback server for this user's connections only, routing to the Backend."""

from __future__ import annotations

import json
import logging
import os
import re
import weakref
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from omnid_client import Client
from omnid_client.errors import Conflict, Invalid, NotFound, OmnidError, PermissionDenied, TooLarge, TransportError

from . import peers
from .omnimemory import Backend, HTTPError

log = logging.getLogger("omnid.compat")

MAX_BODY = 1 << 20
"""Bytes of a request body; OmniMemory's requests are a few hundred."""
IDLE_TIMEOUT = 30.0
"""Seconds a connection may sit idle (or trickle a request) before it is closed."""
_SESSION_PATH = re.compile(r"^/sessions/(?P<sid>[^/]+)(?P<rest>/[a-z_-]+)?$")
_PROJECT_PATH = re.compile(r"^/projects/(?P<pid>[^/]+)/memories$")


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx and requests use it
    timeout = IDLE_TIMEOUT
    server_version = "omnid-compat-omnimemory"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        try:
            body = self._body()
            status, answer = 200, self._route(method, body)
        except HTTPError as e:
            status, answer = e.status, {"detail": e.detail}
        except NotFound as e:
            status, answer = 404, {"detail": str(e)}
        except TooLarge as e:
            status, answer = 413, {"detail": str(e)}
        except (Invalid, Conflict) as e:
            status, answer = (409 if isinstance(e, Conflict) else 422), {"detail": str(e)}
        except PermissionDenied as e:
            status, answer = 403, {"detail": str(e)}
        except TransportError as e:
            status, answer = 503, {"detail": f"omnid is unavailable: {e}"}
        except OmnidError as e:
            status, answer = 500, {"detail": str(e)}
        self._reply(status, answer)

    def _body(self) -> dict[str, Any]:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise HTTPError(411, "chunked request bodies are not accepted; send Content-Length")
        if not length:
            return {}
        try:
            n = int(length)
        except ValueError:
            self.close_connection = True
            raise HTTPError(400, "bad Content-Length") from None
        if n < 0 or n > MAX_BODY:
            self.close_connection = True
            raise HTTPError(413, f"request body over {MAX_BODY} bytes")
        raw = self.rfile.read(n)
        if not raw:
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            raise HTTPError(422, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise HTTPError(422, "the body must be a JSON object")
        return body

    def _route(self, method: str, body: dict[str, Any]) -> Any:
        url = urlsplit(self.path)
        path, query = url.path.rstrip("/") or "/", parse_qs(url.query)
        api = self.server.backend
        if path == "/health" and method == "GET":
            return {"status": "healthy"}
        if path == "/sessions/get_or_create" and method == "POST":
            return api.get_or_create(body, self._peer_pid)
        if path == "/sessions/start" and method == "POST":
            return api.start(body, self._peer_pid)
        m = _SESSION_PATH.match(path)
        if m:
            sid, rest = m["sid"], m["rest"] or ""
            if sid in ("None", "null"):  # what the MCP server sends when it has no session yet
                raise HTTPError(404, f"Session {sid} not found")
            routes: dict[tuple[str, str], Callable[[], Any]] = {
                ("GET", ""): lambda: api.session(sid),
                ("POST", "/heartbeat"): lambda: api.heartbeat(sid),
                ("POST", "/end"): lambda: api.end(sid),
                ("GET", "/context"): lambda: api.get_context(sid),
                ("POST", "/context"): lambda: api.append_context(sid, body),
                ("GET", "/activity"): lambda: api.activity(sid, _limit(query)),
            }
            if (method, rest) in routes:
                return routes[(method, rest)]()
        m = _PROJECT_PATH.match(path)
        if m:
            if method == "POST":
                return api.create_memory(m["pid"], body)
            if method == "GET":
                return api.memories(m["pid"], query)
        raise HTTPError(404, "Not Found")

    def _peer_pid(self) -> int | None:
        inode = self.server.peer_inodes.get(self.request)
        return peers.pid_of(inode) if inode is not None else None

    def _reply(self, status: int, answer: Any) -> None:
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


def _limit(query: dict[str, list[str]]) -> int:
    try:
        return max(1, min(int((query.get("limit") or ["50"])[0]), 1000))
    except ValueError:
        raise HTTPError(422, "limit must be an integer") from None


class Server(ThreadingHTTPServer):
    """Loopback only; with ``check_peers`` each connection must come from this user's uid."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, port: int, backend: Backend, *, check_peers: bool):
        self.backend = backend
        self.check_peers = check_peers
        self.uid = os.geteuid()
        self.refused = 0
        self.peer_inodes: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        super().__init__(("127.0.0.1", port), Handler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if not self.check_peers:
            return True
        try:
            who = peers.peer(request)
        except OSError as e:
            log.warning("refused %s: cannot read the socket table: %s", client_address, e)
            who = None
        if who is None or who.uid != self.uid:
            self.refused += 1
            log.warning("refused a connection from %s: uid %s is not %d", client_address,
                        who.uid if who else "unknown", self.uid)
            return False
        self.peer_inodes[request] = who.inode
        return True


def make_server(port: int, *, check_peers: bool, make_client: Callable[[], Client] | None = None) -> Server:
    return Server(port, Backend(make_client or Client), check_peers=check_peers)
