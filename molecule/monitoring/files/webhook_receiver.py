#!/usr/bin/python3
"""Molecule fixture: accept Alertmanager webhook POSTs and append each body as one JSON line."""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

HOST, PORT, LOG = sys.argv[1], int(sys.argv[2]), sys.argv[3]


class Handler(BaseHTTPRequestHandler):
    """Record the JSON body of every POST."""

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(LOG, "a", encoding="utf-8") as log:
            log.write(json.dumps(json.loads(body)) + "\n")
        self.send_response(200)
        self.end_headers()


HTTPServer((HOST, PORT), Handler).serve_forever()
