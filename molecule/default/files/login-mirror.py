#!/usr/bin/python3
"""Serve a directory over HTTP on 127.0.0.1, to a client that logs in (HTTP basic auth) only.

TEST FIXTURE: stands for a cluster mirror behind a login, so that apt reads the test repository
only when it sends the credentials of the role's auth.conf.d file; any other request gets 401.
Usage: login-mirror.py DIR PORT LOGIN PASSWORD
"""

import base64
import functools
import http.server
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    expected = ""

    def send_head(self):
        if self.headers.get("Authorization", "") != self.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="lab mirror"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return super().send_head()


def main(directory, port, login, password):
    Handler.expected = "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()
    handler = functools.partial(Handler, directory=directory)
    http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), handler).serve_forever()


if __name__ == "__main__":
    main(*sys.argv[1:])
