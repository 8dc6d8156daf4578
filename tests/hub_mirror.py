"""A loopback stand-in for the Hugging Face Hub, for HF_ENDPOINT in the tests.

Serves `GET/HEAD /<org>/<repo>/resolve/<revision>/<file>` from files the tests put in it, with the
headers `huggingface_hub` reads (X-Repo-Commit, ETag, Content-Length, X-Error-Code), and logs every
request. It listens on 127.0.0.1 only and shuts itself down after `lifetime` seconds at the latest.
"""
import hashlib
import http.server
import threading

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubMirror:
    def __init__(self, lifetime=300.0):
        self.files = {}                      # (repo id, file name) -> bytes
        self.log = []                        # "HEAD /timm/.../model.safetensors", ...
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body):
                mirror.log.append(f"{self.command} {self.path}")
                parts = self.path.split("?")[0].strip("/").split("/")
                repo, file = "/".join(parts[:2]), "/".join(parts[4:])
                data = mirror.files.get((repo, file))
                if data is None:
                    known = any(r == repo for r, _ in mirror.files)
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound" if known else "RepoNotFound")
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.timer = threading.Timer(lifetime, self.stop)
        self.timer.daemon = True
        self.timer.start()

    def put(self, repo, file, data: bytes):
        self.files[(repo, file)] = data

    def stop(self):
        self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()
