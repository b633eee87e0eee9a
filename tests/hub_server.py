"""A loopback server that speaks the Hugging Face Hub's file endpoints, for testing the real
``huggingface_hub`` client through ``HF_ENDPOINT``.

It serves ``HEAD``/``GET /{repo_id}/resolve/{revision}/{path}`` with the headers the client reads
(``X-Repo-Commit``, ``X-Linked-Etag`` = the file's sha256 as LFS files carry, ``X-Linked-Size``),
and answers unknown repos, revisions and files with the Hub's ``X-Error-Code`` values.
"""

from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class FakeHub:
    """``repos[repo_id][commit][path] = bytes``; ``refs[repo_id][branch] = commit``."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}
        self.refs: dict[str, dict[str, str]] = {}
        self.requests: list[tuple[str, str]] = []
        self._server: ThreadingHTTPServer | None = None

    def add_file(self, repo_id: str, path: str, content: bytes, *, commit: str, branch: str = "main") -> None:
        self.repos.setdefault(repo_id, {}).setdefault(commit, {})[path] = content
        self.refs.setdefault(repo_id, {})[branch] = commit

    # -- server lifecycle ------------------------------------------------------------------------
    def start(self) -> str:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- protocol ------------------------------------------------------------------------------
    def _answer(self, handler: BaseHTTPRequestHandler, *, body: bool) -> None:
        self.requests.append((handler.command, handler.path))
        parts = unquote(urlparse(handler.path).path).lstrip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(handler, 404, "EntryNotFound", "unknown endpoint")
        repo_id, revision, path = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
        if repo_id not in self.repos:
            return self._error(handler, 404, "RepoNotFound", f"Repository {repo_id} not found")
        commit = self.refs[repo_id].get(revision, revision)
        files = self.repos[repo_id].get(commit)
        if files is None:
            return self._error(handler, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if path not in files:
            return self._error(handler, 404, "EntryNotFound", f"{path} does not exist at {revision}")
        content = files[path]
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(content)))
        handler.send_header("X-Repo-Commit", commit)
        handler.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
        handler.send_header("X-Linked-Etag", f'"{hashlib.sha256(content).hexdigest()}"')
        handler.send_header("X-Linked-Size", str(len(content)))
        handler.end_headers()
        if body:
            handler.wfile.write(content)

    @staticmethod
    def _error(handler: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        payload = ('{"error": "%s"}' % message).encode()
        handler.send_response(status)
        handler.send_header("X-Error-Code", code)
        handler.send_header("X-Error-Message", message)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(payload)


class FileServer:
    """Plain HTTP GET of ``files[path] = bytes`` on loopback, like a release asset or S3 object:
    no checksum header of any kind, so only trust on first use can pin what it serves. It honours
    ``Range: bytes=N-`` (206, as CDNs do) and records each request's Range header in ``ranges``;
    ``cut_next = N`` makes the next answer stop after N bytes of its body (a killed transfer)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.ranges: list[str | None] = []
        self.cut_next: int | None = None
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    def start(self) -> str:
        served = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = unquote(urlparse(self.path).path)
                served.requests.append(path)
                served.ranges.append(self.headers.get("Range"))
                content = served.files.get(path)
                if content is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                if (wanted := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")) is not None:
                    start = int(wanted.group(1))
                    if start >= len(content):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(content)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
                else:
                    self.send_response(200)
                body = content[start:]
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if served.cut_next is not None:
                    body, served.cut_next = body[:served.cut_next], None
                    self.close_connection = True
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
