"""A local, in-memory, Hub-compatible HTTP server for the huggingface_hub 2.4.0 client (no Xet, no LFS).

Endpoints (paths for model repos ``{ns}/{name}``):

- ``POST /api/repos/create`` (409 + ``url`` if it exists), ``POST /api/validate-yaml``
- ``POST /api/models/{repo}/preupload/{rev}`` (every file ``uploadMode: "regular"``, so contents travel base64 in
  the commit and the client never needs Xet/LFS), ``POST /api/models/{repo}/commit/{rev}`` (NDJSON)
- ``POST /api/models/{repo}/branch/{branch}``, ``GET /api/models/{repo}/refs``
- ``GET /api/models/{repo}[/revision/{rev}]``, ``GET /api/models/{repo}/tree/{rev}[/{path}]``
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag`` (sha256 for binary "LFS" files,
  git blob sha1 otherwise), ``Content-Length`` and ``Range`` (206)
- errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``)

Faults for tests: :meth:`FakeHub.drop_once` (close the connection after N body bytes, once),
:meth:`FakeHub.fail_once` (answer one GET with an HTTP error), ``chunk_delay`` (slow bodies). Every request is logged
in :attr:`FakeHub.requests`. Request bodies are bounded by ``Content-Length`` and ``MAX_BODY``; sockets time out.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY = 256 << 20
LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".png", ".jpg", ".tar")
CHUNK = 64 << 10


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str, data: bytes) -> bool:
    return path.endswith(LFS_SUFFIXES) or len(data) > (10 << 20)


def etag_of(path: str, data: bytes) -> str:
    return hashlib.sha256(data).hexdigest() if is_lfs(path, data) else git_sha1(data)


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)


class HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, commit: str | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.code, self.message, self.commit, self.extra = status, code, message, commit, extra


class FakeHub:
    """In-memory hub; ``start()`` binds 127.0.0.1:0 and serves in a daemon thread until ``stop()``."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.lock = threading.RLock()
        self.requests: list[dict[str, Any]] = []
        self._faults: list[dict[str, Any]] = []
        self.chunk_delay = 0.0
        self.chunk_size: int | None = None
        self._counter = itertools.count()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self.endpoint

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # ------------------------------------------------------------------ test helpers
    def reset_log(self) -> None:
        with self.lock:
            self.requests.clear()

    def drop_once(self, path_suffix: str, after_bytes: int) -> None:
        """The next GET of a file whose ``repo_id/path`` ends with ``path_suffix`` sends ``after_bytes``, then hangs
        up."""
        with self.lock:
            self._faults.append({"kind": "drop", "suffix": path_suffix, "after": after_bytes})

    def fail_once(self, path_suffix: str, status: int = 500) -> None:
        """The next GET of a file whose ``repo_id/path`` ends with ``path_suffix`` is answered with HTTP ``status``."""
        with self.lock:
            self._faults.append({"kind": "fail", "suffix": path_suffix, "status": status})

    def _take_fault(self, path: str) -> dict[str, Any] | None:
        with self.lock:
            for i, f in enumerate(self._faults):
                if path.endswith(f["suffix"]):
                    return self._faults.pop(i)
        return None

    def create_repo(self, repo_id: str, private: bool = False) -> Repo:
        with self.lock:
            if repo_id not in self.repos:
                repo = Repo(repo_id, private)
                sha = self._new_sha(repo_id, "", "initial commit")
                repo.commits[sha] = {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}
                repo.refs["main"] = sha
                self.repos[repo_id] = repo
            return self.repos[repo_id]

    def add_files(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> str:
        """Commit ``files`` straight into ``repo_id`` (created if needed); returns the commit sha."""
        repo = self.create_repo(repo_id)
        with self.lock:
            parent = repo.refs[branch]
            tree = dict(repo.commits[parent])
            tree.update(files)
            sha = self._new_sha(repo_id, parent, "add files")
            repo.commits[sha] = tree
            repo.refs[branch] = sha
            return sha

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        with self.lock:
            repo = self.repos[repo_id]
            return dict(repo.commits[repo.refs.get(revision, revision)])

    def _new_sha(self, repo_id: str, parent: str, message: str) -> str:
        return hashlib.sha1(f"{repo_id}\0{parent}\0{message}\0{next(self._counter)}".encode()).hexdigest()

    # ------------------------------------------------------------------ model
    def _repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "RepoNotFound", f"Repository {repo_id} not found")
        return repo

    def _resolve(self, repo: Repo, rev: str) -> str:
        if rev in repo.refs:
            return repo.refs[rev]
        if rev in repo.commits:
            return rev
        raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")

    def commit(self, repo_id: str, rev: str, body: bytes) -> dict[str, Any]:
        with self.lock:
            repo = self._repo(repo_id)
            if rev not in repo.refs:
                raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            header: dict[str, Any] = {}
            adds: dict[str, bytes] = {}
            deletes: list[tuple[str, bool]] = []
            for line in body.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                key, value = item.get("key"), item.get("value", {})
                if key == "header":
                    header = value
                elif key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, None, f"unsupported encoding {value.get('encoding')!r}")
                    adds[value["path"]] = base64.b64decode(value["content"])
                elif key == "lfsFile":
                    raise HubError(400, None, "this fake hub only accepts regular (inline) files")
                elif key in ("deletedFile", "deletedFolder"):
                    deletes.append((value["path"], key == "deletedFolder"))
                else:
                    raise HubError(400, None, f"unknown commit line key {key!r}")
            parent = repo.refs[rev]
            if header.get("parentCommit") and header["parentCommit"] != parent:
                raise HubError(412, None, "parent commit is not the head of the branch")
            tree = dict(repo.commits[parent])
            for path, folder in deletes:
                for p in [p for p in tree if p == path or (folder and p.startswith(path.rstrip("/") + "/"))]:
                    del tree[p]
            tree.update(adds)
            sha = self._new_sha(repo_id, parent, str(header.get("summary", "")))
            repo.commits[sha] = tree
            repo.refs[rev] = sha
            return {"commitUrl": f"{self.endpoint}/{repo_id}/commit/{sha}", "commitOid": sha}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a connection may sit idle before the server gives up on it

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # ------------------------------------------------------------------ plumbing
    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise HubError(413, None, "body too large")
        data = b""
        while len(data) < n:
            chunk = self.rfile.read(n - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def _send(self, status: int, payload: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None):
        body = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
        self.send_response(status)
        if raw is None:
            self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, e: HubError) -> None:
        headers = {}
        if e.code:
            headers["X-Error-Code"] = e.code
            headers["X-Error-Message"] = e.message
        if e.commit:
            headers["X-Repo-Commit"] = e.commit
        self._send(e.status, {"error": e.message, **e.extra}, headers)

    def _dispatch(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        parts = [urllib.parse.unquote(p) for p in url.path.split("/") if p]
        self._entry = {"method": self.command, "path": url.path, "range": self.headers.get("Range"), "t": time.time()}
        with self.fake.lock:
            self.fake.requests.append(self._entry)
        try:
            self._route(parts, query)
        except HubError as e:
            self._error(e)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_HEAD = do_PUT = do_DELETE = do_GET

    # ------------------------------------------------------------------ routes
    def _route(self, parts: list[str], query: dict[str, list[str]]) -> None:
        fake, cmd = self.fake, self.command
        if parts[:1] == ["api"]:
            rest = parts[1:]
            if rest == ["repos", "create"] and cmd == "POST":
                return self._create_repo()
            if rest == ["validate-yaml"] and cmd == "POST":
                self._body()
                return self._send(200, {"errors": [], "warnings": []})
            if rest == ["agent-harnesses"]:
                return self._send(200, {"standardEnvVars": [], "harnesses": {}})
            if rest == ["whoami-v2"]:
                return self._send(200, {"type": "user", "name": "tester", "orgs": [], "auth": {}})
            if len(rest) >= 3 and rest[0] == "models":
                repo_id, tail = f"{rest[1]}/{rest[2]}", rest[3:]
                if cmd == "POST" and len(tail) >= 2 and tail[0] == "preupload":
                    return self._preupload(repo_id, "/".join(tail[1:]))
                if cmd == "POST" and len(tail) >= 2 and tail[0] == "commit":
                    body = self._body()
                    return self._send(200, fake.commit(repo_id, "/".join(tail[1:]), body))
                if cmd == "POST" and len(tail) >= 2 and tail[0] == "branch":
                    return self._branch(repo_id, "/".join(tail[1:]))
                if cmd == "GET" and tail == ["refs"]:
                    return self._refs(repo_id)
                if cmd == "GET" and (not tail or tail[0] == "revision"):
                    return self._info(repo_id, "/".join(tail[1:]) if tail else "main")
                if cmd == "GET" and len(tail) >= 2 and tail[0] == "tree":
                    return self._tree(repo_id, tail[1], "/".join(tail[2:]), query)
            raise HubError(404, None, f"no route for {cmd} {self.path}")
        if len(parts) >= 5 and parts[2] == "resolve" and cmd in ("GET", "HEAD"):
            return self._resolve_file(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        raise HubError(404, None, f"no route for {cmd} {self.path}")

    def _create_repo(self) -> None:
        body = json.loads(self._body() or b"{}")
        name, org = body.get("name"), body.get("organization")
        if not name or not org:
            raise HubError(400, None, "name and organization are required")
        repo_id = f"{org}/{name}"
        url = f"{self.fake.endpoint}/{repo_id}"
        with self.fake.lock:
            exists = repo_id in self.fake.repos
            self.fake.create_repo(repo_id, private=bool(body.get("private") or body.get("visibility") == "private"))
        if exists:
            return self._send(409, {"error": "You already created this model repo", "url": url})
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def _preupload(self, repo_id: str, rev: str) -> None:
        body = json.loads(self._body() or b"{}")
        with self.fake.lock:
            repo = self.fake._repo(repo_id)
            tree = repo.commits[self.fake._resolve(repo, rev)] if rev in repo.refs else {}
        files = []
        for f in body.get("files", []):
            old = tree.get(f["path"])
            files.append(
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_sha1(old) if old is not None else None,
                }
            )
        self._send(200, {"files": files, "commitOid": repo.refs.get(rev)})

    def _branch(self, repo_id: str, branch: str) -> None:
        body = json.loads(self._body() or b"{}")
        with self.fake.lock:
            repo = self.fake._repo(repo_id)
            if branch in repo.refs:
                raise HubError(409, None, f"Reference already exists: refs/heads/{branch}")
            repo.refs[branch] = self.fake._resolve(repo, body.get("startingPoint") or "main")
        self._send(200, {})

    def _refs(self, repo_id: str) -> None:
        with self.fake.lock:
            repo = self.fake._repo(repo_id)
            branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": s} for b, s in repo.refs.items()]
        self._send(200, {"branches": branches, "tags": [], "converts": []})

    def _info(self, repo_id: str, rev: str) -> None:
        with self.fake.lock:
            repo = self.fake._repo(repo_id)
            sha = self.fake._resolve(repo, urllib.parse.unquote(rev))
            tree = repo.commits[sha]
        self._send(
            200,
            {
                "id": repo_id,
                "modelId": repo_id,
                "sha": sha,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "tags": [],
                "siblings": [{"rfilename": p} for p in sorted(tree)],
            },
        )

    def _tree(self, repo_id: str, rev: str, prefix: str, query: dict[str, list[str]]) -> None:
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        with self.fake.lock:
            repo = self.fake._repo(repo_id)
            tree = repo.commits[self.fake._resolve(repo, rev)]
        base = prefix.strip("/")
        entries: dict[str, dict[str, Any]] = {}
        for path, data in sorted(tree.items()):
            if base and not path.startswith(base + "/"):
                continue
            rel = path[len(base) + 1 :] if base else path
            segs = rel.split("/")
            for i in range(1, len(segs)):
                d = "/".join(([base] if base else []) + segs[:i])
                if recursive or i == 1:
                    entries.setdefault(d, {"type": "directory", "path": d, "oid": git_sha1(d.encode()), "size": 0})
            if recursive or len(segs) == 1:
                e: dict[str, Any] = {"type": "file", "path": path, "size": len(data), "oid": git_sha1(data)}
                if is_lfs(path, data):
                    e["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                entries[path] = e
        if base and not entries:
            raise HubError(404, "EntryNotFound", f"{base} does not exist")
        self._send(200, list(entries.values()))

    def _resolve_file(self, repo_id: str, rev: str, path: str) -> None:
        fake = self.fake
        with fake.lock:
            repo = fake._repo(repo_id)
            sha = fake._resolve(repo, rev)
            data = repo.commits[sha].get(path)
        if data is None:
            raise HubError(404, "EntryNotFound", f"{path} does not exist at {rev}", commit=sha)
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{etag_of(path, data)}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if self.command == "HEAD":
            self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return
        fault = fake._take_fault(f"{repo_id}/{path}")
        if fault is not None and fault["kind"] == "fail":
            raise HubError(fault["status"], None, "injected failure")
        start, end, status = 0, len(data), 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, _, b = rng[len("bytes=") :].partition("-")
            start = int(a) if a else 0
            end = int(b) + 1 if b else len(data)
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        body = data[start:end]
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        limit = len(body) if fault is None else min(fault["after"], len(body))
        step = fake.chunk_size or CHUNK
        for i in range(0, limit, step):
            self.wfile.write(body[i : min(i + step, limit)])
            if fake.chunk_delay:
                self.wfile.flush()
                time.sleep(fake.chunk_delay)
        self._entry["t_end"] = time.time()
        if fault is not None:  # hang up mid-body
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
