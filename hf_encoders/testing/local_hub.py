"""A local server speaking the part of the Hugging Face Hub's HTTP API that `huggingface_hub` uses to create a model
repository, validate a card, commit files and download them: for the tests and the offline demo, where the Hub cannot
be reached. Point `HF_ENDPOINT` at it (huggingface_hub reads it when imported); nothing else in hf_encoders knows it
exists.

    with LocalHub() as hub:                      # a thread on a free port; repositories live in memory
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint}
        ...                                      # push and from_pretrained("org/name") in processes started with env
        hub.fail("commit", status=500)           # the next commit request fails, without effect (as on the Hub)

    python -m hf_encoders.testing.local_hub --port 8765  # the same server in the foreground

Commits are atomic, as on the Hub: a commit request is read and checked whole, then applied, or refused and nothing
changes. Files are uploaded in the commit itself ("regular" upload mode), so no LFS or Xet storage is involved.
"""

import argparse
import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from ..hub import card_metadata_errors

REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
ROUTES = [  # (method, name, pattern)
    ("POST", "create", re.compile(r"^/api/repos/create$")),
    ("POST", "validate", re.compile(r"^/api/validate-yaml$")),
    ("POST", "preupload", re.compile(rf"^/api/models/{REPO}/preupload/(?P<revision>[^/]+)$")),
    ("POST", "commit", re.compile(rf"^/api/models/{REPO}/commit/(?P<revision>[^/]+)$")),
    ("POST", "branch", re.compile(rf"^/api/models/{REPO}/branch/(?P<branch>[^/]+)$")),
    ("GET", "info", re.compile(rf"^/api/models/{REPO}(?:/revision/(?P<revision>[^/]+))?$")),
    ("GET", "tree", re.compile(rf"^/api/models/{REPO}/tree/(?P<revision>[^/]+)(?:/(?P<path>.*))?$")),
    ("GET", "download", re.compile(rf"^/{REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)$")),
]


def git_blob_id(content: bytes) -> str:
    """The git object id of a file: what the Hub reports as a regular file's oid."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, bytes]


@dataclass
class Repository:
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or "refs/pr/N" -> commit oid
    pull_requests: int = 0

    def resolve(self, revision: str) -> Commit | None:
        return self.commits.get(self.refs.get(revision, revision))

    def history(self, revision: str = "main") -> list[Commit]:
        """The commits reachable from `revision`, newest first."""
        commits, commit = [], self.resolve(revision)
        while commit is not None:
            commits.append(commit)
            commit = self.commits.get(commit.parent) if commit.parent else None
        return commits


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class LocalHub:
    """The server and its repositories; `endpoint` is the URL to give `HF_ENDPOINT`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.repositories: dict[str, Repository] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for tests
        self._failures: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def fail(self, route: str, times: int = 1, status: int = 500) -> None:
        """The next `times` requests to `route` (create, validate, preupload, commit, branch, info, tree, download)
        are answered with `status` and have no effect."""
        if route not in {name for _, name, _ in ROUTES}:
            raise ValueError(f"Unknown route {route!r}; routes are {[name for _, name, _ in ROUTES]}.")
        with self._lock:
            self._failures.setdefault(route, []).extend([status] * times)

    def start(self) -> "LocalHub":
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="local-hub")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------------------------------------------------------
    # the API

    def _repository(self, repo_id: str) -> Repository:
        if repo_id not in self.repositories:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return self.repositories[repo_id]

    def _commit_at(self, repository: Repository, revision: str) -> Commit | None:
        commit = repository.resolve(revision)
        if commit is None and (revision != "main" or repository.commits):
            raise HubError(404, f"Revision {revision} not found", "RevisionNotFound")
        return commit

    def handle(self, name: str, match: dict, query: dict, body: bytes) -> tuple[int, dict, bytes | dict]:
        with self._lock:
            if failures := self._failures.get(name):
                status = failures.pop(0)
                return status, {}, {"error": f"Injected failure ({status}) of {name}"}
            return getattr(self, f"_{name}")(match, query, body)

    def _create(self, match, query, body):
        payload = json.loads(body)
        repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
        if payload.get("type", "model") != "model":
            raise HubError(400, "This local Hub holds model repositories only")
        if repo_id in self.repositories:
            return 409, {}, {"error": "You already created this model repo", "url": f"{self.endpoint}/{repo_id}"}
        self.repositories[repo_id] = Repository(private=payload.get("visibility") == "private")
        return 200, {}, {"url": f"{self.endpoint}/{repo_id}", "name": repo_id}

    def _validate(self, match, query, body):
        errors = card_metadata_errors(json.loads(body)["content"])
        if errors:
            return 400, {}, {"errors": [{"message": error} for error in errors], "warnings": []}
        return 200, {}, {"errors": [], "warnings": []}

    def _preupload(self, match, query, body):
        repository = self._repository(match["repo"])
        commit = self._commit_at(repository, unquote(match["revision"]))
        files = commit.files if commit else {}
        answer = []
        for entry in json.loads(body)["files"]:
            existing = files.get(entry["path"])
            answer.append(
                {
                    "path": entry["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_id(existing) if existing is not None else None,
                }
            )
        return 200, {}, {"files": answer}

    def _commit(self, match, query, body):
        repo_id, revision = match["repo"], unquote(match["revision"])
        repository = self._repository(repo_id)
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "A commit starts with its header")
        header = lines[0]["value"]
        parent = self._commit_at(repository, revision)
        if header.get("parentCommit") and (parent is None or header["parentCommit"] != parent.oid):
            raise HubError(412, f"The parent commit {header['parentCommit']} is not the head of {revision}")
        files = dict(parent.files) if parent else {}
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"{value['path']}: only base64 file contents are supported")
                files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
            elif line["key"] == "deletedFolder":
                files = {path: data for path, data in files.items() if not path.startswith(value["path"].rstrip("/"))}
            else:
                raise HubError(400, f"This local Hub does not support {line['key']!r} operations")
        message = header.get("summary", "")
        oid = hashlib.sha1(
            json.dumps(
                [
                    parent.oid if parent else None,
                    message,
                    time.time_ns(),
                    sorted((p, git_blob_id(d)) for p, d in files.items()),
                ]
            ).encode()
        ).hexdigest()
        repository.commits[oid] = Commit(oid, parent.oid if parent else None, message, files)
        answer = {"commitUrl": f"{self.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}
        if query.get("create_pr") == ["1"]:
            repository.pull_requests += 1
            number = repository.pull_requests
            repository.refs[f"refs/pr/{number}"] = oid
            answer["pullRequestUrl"] = f"{self.endpoint}/{repo_id}/discussions/{number}"
        else:
            repository.refs[revision] = oid
        return 200, {}, answer

    def _branch(self, match, query, body):
        repository = self._repository(match["repo"])
        branch = unquote(match["branch"])
        if branch in repository.refs:
            raise HubError(409, f"Branch {branch} already exists")
        start = (json.loads(body) if body else {}).get("startingPoint") or "main"
        commit = self._commit_at(repository, start)
        if commit is None:
            raise HubError(400, "An empty repository has no commit to branch from")
        repository.refs[branch] = commit.oid
        return 200, {}, {}

    def _info(self, match, query, body):
        repository = self._repository(match["repo"])
        commit = self._commit_at(repository, unquote(match["revision"] or "main"))
        files = sorted(commit.files) if commit else []
        return (
            200,
            {},
            {
                "id": match["repo"],
                "modelId": match["repo"],
                "private": repository.private,
                "sha": commit.oid if commit else None,
                "siblings": [{"rfilename": path} for path in files],
            },
        )

    def _tree(self, match, query, body):
        repository = self._repository(match["repo"])
        commit = self._commit_at(repository, unquote(match["revision"]))
        prefix = (match["path"] or "").strip("/")
        files = commit.files if commit else {}
        entries = [
            {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)}
            for path, data in sorted(files.items())
            if not prefix or path.startswith(prefix + "/")
        ]
        return 200, {}, entries

    def _download(self, match, query, body):
        repository = self._repository(match["repo"])
        commit = self._commit_at(repository, unquote(match["revision"]))
        path = unquote(match["path"])
        if commit is None or path not in commit.files:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        data = commit.files[path]
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{git_blob_id(data)}"',
            "Content-Type": "application/octet-stream",
        }
        return 200, headers, data


def _handler(hub: LocalHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # quiet: tests read `hub.requests` instead
            pass

        def _serve(self, method: str) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            hub.requests.append((method, url.path))
            lookup = "GET" if method == "HEAD" else method
            for route_method, name, pattern in ROUTES:
                if route_method == lookup and (match := pattern.match(url.path)):
                    try:
                        status, headers, payload = hub.handle(name, match.groupdict(), parse_qs(url.query), body)
                    except HubError as error:
                        code = {"X-Error-Code": error.code} if error.code else {}
                        status, headers, payload = (
                            error.status,
                            {**code, "X-Error-Message": error.message},
                            {"error": error.message},
                        )
                    break
            else:
                status, headers, payload = 404, {}, {"error": f"This local Hub does not serve {method} {url.path}"}
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            if not isinstance(payload, bytes):
                headers = {"Content-Type": "application/json", **headers}
            self.send_response(status, HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "")
            for key, value in {**headers, "Content-Length": str(len(data))}.items():
                self.send_header(key, value)
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(data)

        def do_GET(self):
            self._serve("GET")

        def do_HEAD(self):
            self._serve("HEAD")

        def do_POST(self):
            self._serve("POST")

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A local server speaking the Hub's upload and download API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    hub = LocalHub(args.host, args.port)
    print(f"Local Hub at {hub.endpoint} (HF_ENDPOINT={hub.endpoint}); Ctrl-C stops it.", flush=True)
    try:
        hub._server.serve_forever()
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    main()


__all__ = ["LocalHub"]
