"""A local stand-in for the Hugging Face Hub's HTTP API, the part huggingface_hub's client uses to create a model
repository, upload a folder (preupload answers "regular", so files come inline in the commit), and download a
snapshot (repository info, then HEAD and GET of /resolve/). The tests point HF_ENDPOINT at it: the real client
code runs against it, no network is touched."""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HubState:
    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}  # repo id -> path -> content
        self.commits: dict[str, str] = {}  # repo id -> last commit sha
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.cards_checked = 0

    def sha(self, repo: str) -> str:
        return self.commits.get(repo, "0" * 40)


def handler(state: HubState, base: str):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def reply(self, code: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def json(self, obj, code: int = 200):
            self.reply(code, json.dumps(obj).encode(), {"Content-Type": "application/json"})

        def body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_POST(self):
            path = self.path.split("?")[0]
            state.requests.append(("POST", path))
            if path == "/api/repos/create":
                req = json.loads(self.body())
                repo = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                state.repos.setdefault(repo, {})
                return self.json({"url": f"{base}/{repo}", "name": repo})
            if path == "/api/validate-yaml":  # README.md's front matter: YAML that parses to a mapping
                import yaml

                text = json.loads(self.body())["content"]
                front = text.split("\n---", 1)[0][4:] if text.startswith("---\n") else ""
                try:
                    ok = isinstance(yaml.safe_load(front), dict)
                except yaml.YAMLError:
                    ok = False
                state.cards_checked += 1
                if not ok:
                    return self.json({"error": "invalid YAML"}, 400)
                return self.json({"errors": [], "warnings": []})
            m = re.fullmatch(r"/api/models/(.+)/(preupload|commit)/([^/]+)", path)
            if m is None or m.group(1) not in state.repos:
                return self.json({"error": "Repository not found"}, 404)
            repo, what = m.group(1), m.group(2)
            if what == "preupload":
                files = json.loads(self.body())["files"]
                return self.json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                            for f in files]})
            for line in self.body().decode().splitlines():
                op = json.loads(line)
                if op["key"] == "file":
                    state.repos[repo][op["value"]["path"]] = base64.b64decode(op["value"]["content"])
            sha = hashlib.sha1(json.dumps(sorted(state.repos[repo])).encode() + state.sha(repo).encode()).hexdigest()
            state.commits[repo] = sha
            return self.json({"commitUrl": f"{base}/{repo}/commit/{sha}", "commitOid": sha})

        def do_GET(self, head: bool = False):
            path = self.path.split("?")[0]
            state.requests.append(("HEAD" if head else "GET", path))
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?", path)
            if m:
                repo = m.group(1)
                if repo not in state.repos:
                    return self.json({"error": "Repository not found"}, 404)
                return self.json({"id": repo, "modelId": repo, "sha": state.sha(repo), "private": False,
                                  "siblings": [{"rfilename": p} for p in sorted(state.repos[repo])]})
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
            if m and m.group(1) in state.repos:  # every file below the folder asked for (recursive=True)
                files = state.repos[m.group(1)]
                prefix = (m.group(3) or "").strip("/")
                return self.json([{"type": "file", "path": p, "size": len(c), "oid": hashlib.sha1(c).hexdigest()}
                                  for p, c in sorted(files.items()) if not prefix or p.startswith(prefix + "/")])
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m and m.group(1) in state.repos and m.group(3) in state.repos[m.group(1)]:
                content = state.repos[m.group(1)][m.group(3)]
                etag = '"' + hashlib.sha1(content).hexdigest() + '"'
                return self.reply(200, content, {"ETag": etag, "X-Repo-Commit": state.sha(m.group(1)),
                                                 "Content-Type": "application/octet-stream"}, head=head)
            return self.reply(404, b"not found", {"X-Error-Code": "EntryNotFound"}, head=head)

        def do_HEAD(self):
            self.do_GET(head=True)

    return Handler


class StandInHub:
    """with StandInHub() as hub: hub.url is its endpoint; hub.state what it holds and was asked."""

    def __enter__(self) -> "StandInHub":
        self.state = HubState()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: None)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.server.RequestHandlerClass = handler(self.state, self.url)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
