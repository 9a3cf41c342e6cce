"""A tiny scripted OpenAI-compatible chat-completions server for the judge tests.

Loopback only (127.0.0.1, a free port chosen by the OS), bounded (delays capped, request bodies capped,
daemon threads, closes without waiting for handlers). A *responder* decides each reply from the parsed
request body and the request number; the server counts requests and keeps their bodies.

``in_flight`` / ``max_in_flight`` count requests between reading their body and sending their reply (the
decrement happens before the first reply byte goes out, so a client's next request cannot overlap its last one
in the count). A request the client abandoned (a timeout) stays counted until its scripted delay ends.

    with JudgeServer(lambda request, number: chat_reply("...")) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

MAX_DELAY_S = 5.0
MAX_BODY_BYTES = 32 * 1024 * 1024


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict -> JSON, str -> sent as is
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (timeouts)


Responder = Callable[[dict[str, Any], int], Reply]


def chat_reply(content: str | None, model: str = "judge-test-2024-01-01", prompt_tokens: int | None = 1000,
               completion_tokens: int | None = 200, finish_reason: str = "stop", refusal: str | None = None) -> Reply:
    """A 200 chat.completion with one choice."""
    body: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "finish_reason": finish_reason,
                     "message": {"role": "assistant", "content": content, "refusal": refusal}}],
    }
    if prompt_tokens is not None:
        body["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                         "total_tokens": prompt_tokens + (completion_tokens or 0)}
    return Reply(200, body)


def error_reply(status: int, message: str, retry_after_ms: int | None = 1) -> Reply:
    headers = {} if retry_after_ms is None else {"retry-after-ms": str(retry_after_ms)}
    return Reply(status, {"error": {"message": message, "type": "test_error", "code": None}}, headers)


def request_images(request: dict[str, Any]) -> list[bytes]:
    """The image bytes sent in the request's first user message, in order."""
    images = []
    for part in request["messages"][0]["content"]:
        if isinstance(part, dict) and part.get("type") == "image_url":
            url = part["image_url"]["url"]
            header, data = url.split(",", 1)
            assert header == "data:image/png;base64", header
            images.append(base64.b64decode(data))
    return images


def mean_rgb(png: bytes) -> tuple[float, float, float]:
    from PIL import Image

    import numpy as np

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64).reshape(-1, 3)
    red, green, blue = pixels.mean(axis=0)
    return float(red), float(green), float(blue)


class JudgeServer:
    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="judge-test-server", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def __enter__(self) -> "JudgeServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                length = int(self.headers.get("content-length", 0))
                if not self.path.endswith("/chat/completions") or length > MAX_BODY_BYTES:
                    self._send(Reply(404, {"error": {"message": f"unknown path {self.path} or body too large"}}))
                    return
                request = json.loads(self.rfile.read(length))
                with server._lock:
                    server.requests.append(request)
                    number = len(server.requests)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    reply = server.responder(request, number)
                    time.sleep(min(reply.delay, MAX_DELAY_S))
                finally:
                    # Leave the count BEFORE any reply byte is sent: a client can only start its next request
                    # after it has this reply, so that request can never be counted alongside this one.
                    with server._lock:
                        server.in_flight -= 1
                try:
                    self._send(reply)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            def _send(self, reply: Reply) -> None:
                data = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
                payload = data.encode("utf-8")
                self.send_response(reply.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

        return Handler
