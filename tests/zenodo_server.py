"""A real HTTP server on the loopback interface, in a thread, for the downloader's tests: it serves files in
Zenodo's layout (/records/<record>/files/<name>, and the record's listing at /api/records/<record> with each
file's size and md5) and any other file at /<name> (a mirror of the checkpoint releases), honours Range
requests, and can break a transfer off after some bytes or flip a byte, once or every time.

    with FileServer({"a.tar.gz": data}, record="6332517") as server:
        server.cut["a.tar.gz"] = [1000]        # the next response for it stops after 1000 bytes
        server.corrupt["a.tar.gz"] = 17        # byte 17 is served flipped (every time)
        server.url, server.requests            # "http://127.0.0.1:<port>", [(path, Range header or None)]
"""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple


class FileServer:
    def __init__(self, files: Dict[str, bytes], record: str = "6332517", listed_sizes: Optional[Dict[str, int]] = None):
        self.files = dict(files)
        self.record = record
        self.listed_sizes = dict(listed_sizes or {})  # a size the listing states instead of the real one
        self.cut: Dict[str, List[int]] = {}  # name -> byte counts after which the next responses stop
        self.corrupt: Dict[str, int] = {}  # name -> offset of a byte served flipped
        self.requests: List[Tuple[str, Optional[str]]] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FileServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)

    def listing(self) -> bytes:
        entries = [{"key": name, "size": self.listed_sizes.get(name, len(data)),
                    "checksum": "md5:" + hashlib.md5(data).hexdigest()} for name, data in self.files.items()]
        return json.dumps({"id": int(self.record), "files": entries}).encode()

    def name_of(self, path: str) -> Optional[str]:
        prefix = f"/records/{self.record}/files/"
        name = path[len(prefix):] if path.startswith(prefix) else path.lstrip("/")
        return name if name in self.files else None

    def handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                with server.lock:
                    server.requests.append((path, self.headers.get("Range")))
                if path == f"/api/records/{server.record}":
                    return self.send_body(200, server.listing(), "application/json")
                name = server.name_of(path)
                if name is None:
                    return self.send_body(404, b"not found", "text/plain")
                data = bytearray(server.files[name])
                if name in server.corrupt:
                    data[server.corrupt[name]] ^= 0xFF
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    if start >= len(data):
                        return self.send_body(416, b"", "text/plain")
                body = bytes(data[start:])
                with server.lock:
                    stop = server.cut[name].pop(0) if server.cut.get(name) else None
                self.send_response(206 if start else 200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                self.wfile.write(body if stop is None else body[:stop])  # cut: the connection then closes
                if stop is not None:
                    self.close_connection = True

            def send_body(self, status: int, body: bytes, content_type: str):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
