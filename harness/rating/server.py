"""The rating page: a Starlette app served by uvicorn, plain HTML/JS/CSS from ``static/`` (no build step, no CDN).

Routes (JSON in and out; every error is ``{"error": "<what is wrong>"}`` with a 4xx status, never a crash)::

    GET  /                  the page (static/index.html; rate.js and rate.css under /static/)
    GET  /api/study         the study's name, rubric, questions and allowed answers
    POST /api/state         {rater} -> the rater's progress and current item (resuming needs nothing else)
    POST /api/answer        {rater, position, criterion, answer, seconds} -> stores one answer, returns the state
    POST /api/undo          {rater} -> deletes the rater's last answer, returns the state
    GET  /image/<key>       an image of the study by its key; only files under the results folder's images/

A rater's list is ``Study.plan(rater)``; ``position`` is the index in it, so the page never sees method
names, item kinds (repeat, gold) or paths. Answers go to ratings.sqlite at once (``harness.rating.db``):
closing the browser loses nothing, and two raters (two threads) write at the same time safely. All text the
page shows is set with ``textContent``; a Content-Security-Policy allows only this server's own scripts.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from harness.rating.db import DuplicateAnswer, RatingsDB
from harness.rating.study import Shown, Study, answer_for
from harness.store import IMAGES_DIR

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
RATER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
KEY_PATTERN = re.compile(r"^[0-9a-f]{6,64}$")
MAX_BODY_BYTES = 4096
MAX_SECONDS = 24 * 3600.0
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class ServerError(RuntimeError):
    """The server cannot start as asked (e.g. the port is taken): the message says what to do."""


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class RatingApp:
    """The handlers, bound to one study, its database and results folder."""

    def __init__(self, study: Study, db: RatingsDB, results_dir: str | Path) -> None:
        self.study, self.db = study, db
        self.images_root = (Path(results_dir) / IMAGES_DIR).resolve()
        self.criteria = list(study.rubric.criteria)
        self._lock = threading.Lock()  # plans are built once per rater; handlers run in a thread pool

    # -- helpers --------------------------------------------------------------------------------------------
    async def _body(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise BadRequest(f"request body is {len(raw)} bytes; at most {MAX_BODY_BYTES}", 413)
        try:
            body = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest("request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        return body

    @staticmethod
    def _rater(body: dict[str, Any]) -> str:
        rater = body.get("rater")
        if not isinstance(rater, str) or not RATER_PATTERN.match(rater):
            raise BadRequest("rater id: 1-64 letters, digits or . _ @ - (starting with a letter or digit)")
        return rater

    def _plan(self, rater: str) -> list[Shown]:
        with self._lock:
            return self.study.plan(rater)

    def _state(self, rater: str) -> dict[str, Any]:
        plan = self._plan(rater)
        answered = self.db.answered(self.study.name, rater)
        complete = [len(answered.get(shown.id, {})) >= len(self.criteria) for shown in plan]
        position = next((i for i, done in enumerate(complete) if not done), None)
        state: dict[str, Any] = {
            "rater": rater, "total": len(plan), "done": sum(complete),
            "answered_questions": sum(min(len(answered.get(s.id, {})), len(self.criteria)) for s in plan),
            "total_questions": len(plan) * len(self.criteria), "finished": position is None, "item": None,
        }
        if position is not None:
            shown = plan[position]
            record = self.study.images[shown.left]
            state["item"] = {
                "position": position,
                "left": f"/image/{shown.left}",
                "right": f"/image/{shown.right}" if shown.right is not None else None,
                "prompt": record.prompt,
                "elements": [{"category": str(lora.get("category", "")), "name": str(lora.get("name", "")),
                              "trigger": [str(t) for t in lora.get("trigger", [])]} for lora in record.loras],
                "answers": answered.get(shown.id, {}),
            }
        return state

    # -- routes ---------------------------------------------------------------------------------------------
    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    async def study_info(self, request: Request) -> Response:
        rubric = self.study.rubric
        return JSONResponse({"name": self.study.name, "rubric": rubric.name, "rubric_version": rubric.version,
                             "criteria": [{"id": c, "question": q} for c, q in rubric.criteria.items()],
                             "answers": list(rubric.answers)})

    async def state(self, request: Request) -> Response:
        rater = self._rater(await self._body(request))
        return JSONResponse(self._state(rater))

    async def answer(self, request: Request) -> Response:
        body = await self._body(request)
        rater = self._rater(body)
        unknown = sorted(set(body) - {"rater", "position", "criterion", "answer", "seconds"})
        if unknown:
            raise BadRequest(f"unknown field(s) {unknown}")
        position, criterion, answer, seconds = (body.get(k) for k in ("position", "criterion", "answer", "seconds"))
        plan = self._plan(rater)
        if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position < len(plan):
            raise BadRequest(f"position: a whole number from 0 to {len(plan) - 1}")
        if criterion not in self.criteria:
            raise BadRequest(f"criterion: one of {self.criteria}")
        if isinstance(answer, int) and not isinstance(answer, bool):
            answer = str(answer)
        if not isinstance(answer, str) or answer not in self.study.rubric.answers:
            raise BadRequest(f"answer: one of {list(self.study.rubric.answers)}")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                    or not 0 <= seconds <= MAX_SECONDS):
            raise BadRequest(f"seconds: a number from 0 to {MAX_SECONDS:.0f}, or null")
        current = self._state(rater)["item"]
        if current is None or current["position"] != position:
            raise BadRequest("this item is not the current one (answered in another tab?): reload the page", 409)
        try:
            self.db.add([answer_for(self.study, plan[position], rater, criterion, answer,
                                    None if seconds is None else float(seconds))])
        except DuplicateAnswer as error:
            raise BadRequest(f"{error}; press undo to change it", 409) from None
        return JSONResponse(self._state(rater))

    async def undo(self, request: Request) -> Response:
        rater = self._rater(await self._body(request))
        removed = self.db.undo_last(self.study.name, rater)
        return JSONResponse({**self._state(rater), "undone": removed is not None})

    async def image(self, request: Request) -> Response:
        key = request.path_params["key"]
        if not KEY_PATTERN.match(key):
            raise BadRequest("image key: 6-64 lowercase hex digits")
        record = self.study.images.get(key)
        if record is None:
            raise BadRequest(f"no image {key} in this study", 404)
        path = Path(record.path).resolve()
        if not path.is_relative_to(self.images_root) or not path.is_file():
            raise BadRequest(f"image {key} is not a file under the results folder", 404)
        return FileResponse(path)


async def _security_headers(request: Request, call_next: Any) -> Response:
    response = await call_next(request)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def create_app(study: Study, db: RatingsDB, results_dir: str | Path) -> Starlette:
    handlers = RatingApp(study, db, results_dir)

    async def bad_request(request: Request, error: BadRequest) -> Response:
        return _error(str(error), error.status)

    async def http_error(request: Request, error: HTTPException) -> Response:
        return _error(str(error.detail), error.status_code)

    async def server_error(request: Request, error: Exception) -> Response:
        logger.exception("rating server: unexpected error on %s", request.url.path)
        return _error(f"internal error ({type(error).__name__}); the answer was not stored", 500)

    routes = [
        Route("/", handlers.index),
        Route("/api/study", handlers.study_info),
        Route("/api/state", handlers.state, methods=["POST"]),
        Route("/api/answer", handlers.answer, methods=["POST"]),
        Route("/api/undo", handlers.undo, methods=["POST"]),
        Route("/image/{key}", handlers.image),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(BaseHTTPMiddleware, dispatch=_security_headers)],
                     exception_handlers={BadRequest: bad_request, HTTPException: http_error,
                                         Exception: server_error})


def check_port(host: str, port: int) -> None:
    """ServerError naming the fix when ``host:port`` cannot be bound (in use, or no such address)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ServerError(f"cannot listen on {host}:{port} ({error.strerror}): the port is in use or the "
                              f"address is not this machine's; pass another --port (e.g. --port {port + 1}) or "
                              f"stop the other server") from None


def serve(app: Starlette, host: str, port: int) -> None:
    """Serve until Ctrl-C."""
    check_port(host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")


@contextmanager
def running(app: Starlette, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` in a background thread for the block (tests, notebooks); yields its base URL."""
    check_port(host, port)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ServerError(f"the rating server did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
