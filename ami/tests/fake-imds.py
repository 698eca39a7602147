#!/usr/bin/python3
"""A stand-in for the EC2 instance metadata service, IMDSv2 only, for the first-boot
test. Serves <dir>/user-data (404 when absent) to callers that present a token from
PUT /latest/api/token, like IMDS with http_tokens=required (401 otherwise).
Listens on 127.0.0.1:PORT (default: an ephemeral port), written to <dir>/port.

usage: fake-imds.py DIR [PORT]
"""
import http.server
import os
import sys

TOKEN = "fake-imds-token"
DIR = sys.argv[1]


class Handler(http.server.BaseHTTPRequestHandler):
    def reply(self, code, body=b""):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self):
        if self.path != "/latest/api/token" or not self.headers.get(
            "X-aws-ec2-metadata-token-ttl-seconds"
        ):
            return self.reply(400)
        self.reply(200, TOKEN.encode())

    def do_GET(self):
        if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            return self.reply(401)
        if self.path != "/latest/user-data":
            return self.reply(404)
        try:
            with open(os.path.join(DIR, "user-data"), "rb") as f:
                self.reply(200, f.read())
        except FileNotFoundError:
            self.reply(404)

    def log_message(self, *args):
        pass


PORT = int(sys.argv[2]) if len(sys.argv) > 2 else 0
server = http.server.HTTPServer(("127.0.0.1", PORT), Handler)
with open(os.path.join(DIR, "port.tmp"), "w") as f:
    f.write(str(server.server_address[1]))
os.rename(os.path.join(DIR, "port.tmp"), os.path.join(DIR, "port"))
server.serve_forever()
