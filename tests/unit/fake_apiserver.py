"""A tiny Kubernetes API server on 127.0.0.1 for unit tests of the controller's client side.

Serves LIST and WATCH of pods, ElasticWorkers and ElasticWorkerAutoscalers
(watches are held open until the test says otherwise, like a real server
between events), and GET/POST/PUT of Leases with resourceVersion checks.
Plain HTTP or HTTPS (a self-signed certificate made with openssl). Only
listens on 127.0.0.1.
"""
import json
import os
import queue
import shutil
import ssl
import subprocess
import tempfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kubernetes import client as k8s_client


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _json(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n)) if n else None

    def do_GET(self):
        api = self.server.api
        url = urllib.parse.urlparse(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        api.requests.append(("GET", url.path, query))
        if "/leases/" in url.path:
            return self._lease("GET", url.path.rsplit("/", 1)[1])
        kind = url.path.rstrip("/").rsplit("/", 1)[1]
        if query.get("watch") in ("true", "True", "1"):
            return self._watch(kind, query)
        with api.lock:
            items = list(api.objects.get(kind, {}).values())
            api.rv += 1
            rv = str(api.rv)
        self._json(200, {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items})

    def _watch(self, kind, query):
        api = self.server.api
        events = queue.Queue()  # this watch's own: events go to the newest watch of a kind
        api.watch_queues[kind] = events
        api.watch_started.put((kind, query))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        while not api.stopped.is_set():
            try:
                event = events.get(timeout=0.05)
            except queue.Empty:
                continue
            if event == "END":  # the server ends this watch (its timeout)
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
                return
            line = json.dumps(event).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
        self.close_connection = True

    def _lease(self, verb, name, body=None):
        api = self.server.api
        with api.lock:
            lease = api.leases.get(name)
            if verb == "GET":
                return self._json(200, lease) if lease else self._json(404, {"kind": "Status", "code": 404})
            if verb == "POST":
                if lease:
                    return self._json(409, {"kind": "Status", "code": 409})
            elif not lease or body["metadata"].get("resourceVersion") != lease["metadata"]["resourceVersion"]:
                return self._json(409, {"kind": "Status", "code": 409})
            api.rv += 1
            body["metadata"]["resourceVersion"] = str(api.rv)
            api.leases[body["metadata"]["name"]] = body
        self._json(201 if verb == "POST" else 200, body)

    def do_POST(self):
        body = self._body()
        self.server.api.requests.append(("POST", self.path, None))
        if self.path.rstrip("/").endswith("/leases"):
            return self._lease("POST", body["metadata"]["name"], body)
        self._json(201, body)

    def do_PUT(self):
        body = self._body()
        self.server.api.requests.append(("PUT", self.path, None))
        return self._lease("PUT", self.path.rsplit("/", 1)[1], body)


class FakeApiServer:
    def __init__(self, tls=False):
        self.lock = threading.Lock()
        self.rv = 100
        self.objects = {"pods": {}, "elasticworkers": {}, "elasticworkerautoscalers": {}}
        self.leases = {}
        self.requests = []
        self.watch_queues = {}
        self.watch_started = queue.Queue()
        self.stopped = threading.Event()
        self.tmp = tempfile.mkdtemp(prefix="fake-apiserver-")
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.api = self
        self.tls = tls
        if tls:
            cert, key = os.path.join(self.tmp, "cert.pem"), os.path.join(self.tmp, "key.pem")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                            "-keyout", key, "-out", cert], check=True, capture_output=True)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            self.cert = cert
        self.port = self.httpd.server_address[1]
        self.url = "%s://127.0.0.1:%d" % ("https" if tls else "http", self.port)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def api_client(self):
        conf = k8s_client.Configuration()
        conf.host = self.url
        if self.tls:
            conf.ssl_ca_cert = self.cert
        return k8s_client.ApiClient(conf)

    def kubeconfig(self):
        path = os.path.join(self.tmp, "kubeconfig")
        cluster = {"server": self.url}
        if self.tls:
            cluster["certificate-authority"] = self.cert
        with open(path, "w") as fh:
            json.dump({"apiVersion": "v1", "kind": "Config", "current-context": "fake",
                       "clusters": [{"name": "fake", "cluster": cluster}],
                       "users": [{"name": "fake", "user": {"token": "t"}}],
                       "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}, fh)
        return path

    def send(self, kind, event):
        self.watch_queues.setdefault(kind, queue.Queue()).put(event)

    def close(self):
        self.stopped.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        shutil.rmtree(self.tmp, ignore_errors=True)
