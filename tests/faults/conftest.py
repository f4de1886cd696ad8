"""The fault-injection and bad-input suite (marker ``faults``): every scenario runs on the
real default stack — Prefect's local API, MLflow on sqlite, artifacts on a moto S3 server
over HTTP — and checks that nothing finished is lost and nothing broken is published."""

from __future__ import annotations

import http.client
import http.server
import logging
import random
import socket
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.faults)


@pytest.fixture(autouse=True)
def _on_prefect(prefect_api: None) -> None:
    """Every scenario talks to the session's Prefect API."""


# ---------------------------------------------------------------------------------------
# A fault-injecting HTTP proxy in front of the moto S3 server
# ---------------------------------------------------------------------------------------

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


@dataclass
class FaultPlan:
    """What the proxy does to each request: a seeded draw picks at most one fault.

    ``error_500``/``error_503``/``delay``/``drop`` are probabilities; a drop closes the
    connection without answering (before the request reaches S3, or after it did when
    ``drop_after_forwarding``). ``slow_operations`` delays every request whose query or
    method matches (e.g. ``"partNumber="`` for multipart parts) by ``slow_seconds``.
    """

    error_500: float = 0.0
    error_503: float = 0.0
    delay: float = 0.0
    delay_seconds: float = 0.3
    drop: float = 0.0
    drop_after_forwarding: bool = False
    slow_operations: tuple[str, ...] = ()
    slow_seconds: float = 0.0
    seed: int = 0


@dataclass
class FaultLog:
    requests: int = 0
    injected: Counter = field(default_factory=Counter)
    seen: list[str] = field(default_factory=list)  # "METHOD path?query" of every request


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 that forwards to ``upstream`` and injects faults."""

    def __init__(self, upstream: str, plan: FaultPlan) -> None:
        self.upstream = urllib.parse.urlparse(upstream)
        self.plan = plan
        self.log = FaultLog()
        self._rng = random.Random(plan.seed)
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _handle(self) -> None:
                try:
                    proxy.forward(self)
                except (BrokenPipeError, ConnectionResetError):  # the client was killed or gave up
                    self.close_connection = True

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _draw(self) -> str | None:
        plan = self.plan
        with self._lock:
            x = self._rng.random()
        for name, p in (("error_500", plan.error_500), ("error_503", plan.error_503),
                        ("delay", plan.delay), ("drop", plan.drop)):
            if x < p:
                return name
            x -= p
        return None

    def forward(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        body = self._read_body(handler)
        with self._lock:
            self.log.requests += 1
            self.log.seen.append(f"{handler.command} {handler.path}")
        if any(op in handler.path or op == handler.command for op in self.plan.slow_operations):
            time.sleep(self.plan.slow_seconds)
        fault = self._draw()
        if fault is not None:
            with self._lock:
                self.log.injected[fault] += 1
        if fault in ("error_500", "error_503"):
            status = 500 if fault == "error_500" else 503
            code = "InternalError" if status == 500 else "SlowDown"
            payload = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                       f"<Message>injected fault</Message></Error>").encode()
            handler.send_response(status)
            handler.send_header("Content-Type", "application/xml")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
            return
        if fault == "delay":
            time.sleep(self.plan.delay_seconds)
        if fault == "drop" and not self.plan.drop_after_forwarding:
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        status, headers, data = self._upstream(handler, body)
        if fault == "drop":  # the request took effect; the client never hears of it
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        handler.send_response(status)
        head = handler.command == "HEAD"  # a HEAD answer's Content-Length is the object's size
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP and (head or name.lower() != "content-length"):
                handler.send_header(name, value)
        if not head:
            handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)

    @staticmethod
    def _read_body(handler: http.server.BaseHTTPRequestHandler) -> bytes:
        if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(handler.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(handler.rfile.read(size))
                handler.rfile.readline()
            return b"".join(chunks)
        length = int(handler.headers.get("Content-Length") or 0)
        return handler.rfile.read(length) if length else b""

    def _upstream(self, handler: http.server.BaseHTTPRequestHandler, body: bytes) -> tuple[int, list, bytes]:
        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=120)
        try:
            headers = {k: v for k, v in handler.headers.items()
                       if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"}
            headers["Content-Length"] = str(len(body))
            connection.request(handler.command, handler.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            return response.status, response.getheaders(), data
        finally:
            connection.close()


@pytest.fixture
def fault_proxy(s3_server: str) -> Iterator[Callable[..., FaultProxy]]:
    """``fault_proxy(**FaultPlan fields)`` starts a fault-injecting proxy in front of the
    session's S3 server; all are stopped afterwards."""
    started: list[FaultProxy] = []

    def start(**plan: Any) -> FaultProxy:
        proxy = FaultProxy(s3_server, FaultPlan(**plan)).__enter__()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.__exit__(None, None, None)


# ---------------------------------------------------------------------------------------
# Reading the bucket directly (not through the store), to see what really landed
# ---------------------------------------------------------------------------------------


def bucket_objects(s3_uri: str, endpoint: str) -> dict[str, bytes]:
    """Every raw object under the store's bucket, by key, fetched straight from S3."""
    bucket = urllib.parse.urlparse(s3_uri).netloc
    client = boto3.client("s3", endpoint_url=endpoint)
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            objects[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return objects


@pytest.fixture
def raw_bucket(s3_server: str) -> Callable[[str], dict[str, bytes]]:
    return lambda s3_uri: bucket_objects(s3_uri, s3_server)


@pytest.fixture
def log_messages() -> Iterator[Callable[[str, int], list[str]]]:
    """``log_messages(logger, level)``: a live list of that logger's messages during the test.

    The handler sits on the logger itself: Prefect re-configures the root logger, which
    drops handlers (caplog's included) attached there.
    """
    attached: list[tuple[logging.Logger, logging.Handler]] = []

    def collect(name: str, level: int = logging.INFO) -> list[str]:
        messages: list[str] = []
        handler = logging.Handler(level)
        handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        attached.append((logger, handler))
        return messages

    yield collect
    for logger, handler in attached:
        logger.removeHandler(handler)
