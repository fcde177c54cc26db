"""A local stand-in for the Hugging Face Hub: just the endpoints huggingface_hub's upload path calls
(whoami, create repo/branch, tree listing, preupload, LFS batch + PUT, NDJSON commit), in a thread on
127.0.0.1. It records every request (method, path, headers, body size) and the files each commit lands,
and can be told to fail a given request once (``fail``) to simulate a push cut off half-way."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LFS_SUFFIXES = (".safetensors", ".gguf", ".png")


class FakeHub:
    def __init__(self, token: str = "hf_fake_token_0123456789"):
        self.token = token
        self.user = "tester"
        self.repos: dict[str, dict] = {}          # "model:user/name" -> {"private", "branches": {rev: {path: bytes}}}
        self.lfs: dict[str, bytes] = {}           # sha256 -> content
        self.requests: list[dict] = []
        self.fail: dict[str, int] = {}            # regex on "METHOD /path" -> status to answer once
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        return self.repos[f"{repo_type}:{repo}"]["branches"][revision]

    def _handler(hub):  # noqa: N805 - the handler class closes over the hub
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, code, obj=None, headers=None):
                body = b"" if obj is None else json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _route(self, method):
                body = self._body()
                path = self.path.split("?")[0]
                hub.requests.append({"method": method, "path": self.path, "headers": dict(self.headers),
                                     "bytes": len(body)})
                for pattern, code in list(hub.fail.items()):
                    if re.search(pattern, f"{method} {path}"):
                        del hub.fail[pattern]
                        return self._send(code, {"error": "injected failure"})
                if not path.startswith("/lfs-upload/") and \
                        self.headers.get("Authorization") != f"Bearer {hub.token}":
                    return self._send(401, {"error": "Invalid credentials in Authorization header"})
                try:
                    return self._dispatch(method, path, body)
                except KeyError:
                    return self._send(404, {"error": "Repository not found"},
                                      {"X-Error-Code": "RepoNotFound"})

            def _dispatch(self, method, path, body):
                if method == "GET" and path == "/api/whoami-v2":
                    return self._send(200, {"type": "user", "name": hub.user, "auth": {"type": "access_token"}})
                if method == "POST" and path == "/api/validate-yaml":  # the client checks a README's metadata
                    return self._send(200, {"errors": [], "warnings": []})
                if method == "POST" and path == "/api/repos/create":
                    req = json.loads(body)
                    repo = f"{req.get('organization') or hub.user}/{req['name']}"
                    key = f"{req.get('type') or 'model'}:{repo}"
                    if key in hub.repos:
                        return self._send(409, {"error": "You already created this repo", "url": f"{hub.url}/{repo}"})
                    hub.repos[key] = {"private": bool(req.get("private")), "branches": {"main": {}}}
                    return self._send(200, {"url": f"{hub.url}/{repo}"})
                m = re.fullmatch(r"/api/(model|dataset)s/([^/]+/[^/]+)/(tree|preupload|commit|branch)/([^/]+)(/.*)?",
                                 path)
                if m:
                    rtype, repo, what, rev = m.group(1), m.group(2), m.group(3), m.group(4).replace("%2F", "/")
                    r = hub.repos[f"{rtype}:{repo}"]
                    if what == "branch":
                        r["branches"].setdefault(rev, dict(r["branches"]["main"]))
                        return self._send(200, {})
                    files = r["branches"][rev]
                    if what == "tree":
                        return self._send(200, [_entry(p, c) for p, c in sorted(files.items())])
                    if what == "preupload":
                        req = json.loads(body)
                        return self._send(200, {"files": [
                            {"path": f["path"], "shouldIgnore": False,
                             "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular",
                             **({"oid": _entry(f["path"], files[f["path"]])["oid"]} if f["path"] in files else {})}
                            for f in req["files"]]})
                    if what == "commit":
                        staged = dict(files)
                        for line in body.splitlines():
                            op = json.loads(line)
                            v = op["value"]
                            if op["key"] == "file":
                                staged[v["path"]] = base64.b64decode(v["content"])
                            elif op["key"] == "lfsFile":
                                staged[v["path"]] = hub.lfs[v["oid"]]
                            elif op["key"] == "deletedFile":
                                staged.pop(v["path"], None)
                        files.clear()
                        files.update(staged)
                        oid = hashlib.sha1(repr(sorted(staged)).encode()).hexdigest()
                        return self._send(200, {"commitUrl": f"{hub.url}/{repo}/commit/{oid}", "commitOid": oid})
                m = re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
                if m and method == "POST":
                    req = json.loads(body)
                    objs = [{"oid": o["oid"], "size": o["size"], **({} if o["oid"] in hub.lfs else {
                        "actions": {"upload": {"href": f"{hub.url}/lfs-upload/{o['oid']}"}}})}
                            for o in req["objects"]]
                    return self._send(200, {"transfer": "basic", "objects": objs})
                m = re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", path)
                if m and method == "PUT":
                    if hashlib.sha256(body).hexdigest() != m.group(1):
                        return self._send(400, {"error": "sha256 mismatch"})
                    hub.lfs[m.group(1)] = body
                    return self._send(200, {})
                return self._send(404, {"error": f"fake hub: no endpoint {method} {path}"})

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

            def do_PUT(self):
                self._route("PUT")

        return Handler


def _entry(path: str, content: bytes) -> dict:
    blob = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
    e = {"type": "file", "path": path, "size": len(content), "oid": blob}
    if path.endswith(LFS_SUFFIXES):
        e["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 130}
    return e
