"""A scripted OpenAI-compatible chat server for tests, on loopback.

It answers POST /v1/chat/completions with planned actions, in order: replies,
errors (429 with Retry-After, 500, 503), delays, dropped connections and raw
bodies (garbage, truncated JSON, empty choices, bytes that are not UTF-8).
When the plan runs out it invents fresh templates, never the same twice, so a
run of any length gets answers. Every request it saw is recorded.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WORDS = ("bright", "dark", "vivid", "faded", "sharp", "soft", "tiny", "huge", "old", "new", "calm", "busy")


@dataclass(frozen=True)
class Reply:
    content: str
    prompt_tokens: int = 40
    completion_tokens: int = 12


@dataclass(frozen=True)
class Fail:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    message: str = ""  # the error's message; default "scripted <status>"


@dataclass(frozen=True)
class Raw:
    body: bytes
    status: int = 200


@dataclass(frozen=True)
class Delay:
    seconds: float
    then: object


@dataclass(frozen=True)
class Drop:
    """Closes the connection without an answer."""


EMPTY_CHOICES = Raw(b'{"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []}')
TRUNCATED_JSON = Raw(b'{"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assis')
NOT_UTF8 = Raw(b'{"choices": [{"message": {"content": "\xff\xfe\xfa a photo of a {}"}}]}')
GARBAGE = Raw(b"<html>502 bad gateway from a proxy</html>")


@dataclass
class Seen:
    """One request as the server received it."""

    body: dict[str, Any]
    headers: dict[str, str]
    answered: str  # what the server did: "pending" (still delaying), "reply", "fail 429", "raw", "drop"

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.body.get("messages", [])
        return messages

    @property
    def call_id(self) -> str:
        return self.headers.get("x-promptclimb-call", "")

    @property
    def last_user_message(self) -> str:
        content: str = next(m["content"] for m in reversed(self.messages) if m["role"] == "user")
        return content


def invented_templates(counter: Iterator[int]) -> Callable[[dict], Reply]:
    """A default answer: m new, unique templates in a typical messy style."""

    def answer(body: dict) -> Reply:
        asked = re.search(r"Write (\d+)", body["messages"][-1]["content"])
        lines = []
        for _ in range(min(int(asked.group(1)), 40) if asked else 1):
            n = next(counter)
            lines.append(f"- a {WORDS[n % len(WORDS)]} photo number {n} of a {{}}.")
        return Reply("Here are some templates:\n" + "\n".join(lines))

    return answer


class ScriptedLLM:
    def __init__(
        self,
        plan: Iterable[object] = (),
        default: Callable[[dict], object] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._plan = list(plan)
        self._default = default or invented_templates(itertools.count())
        self._lock = threading.Lock()
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.most_in_flight = 0
        server = self
        self._http = _QuietServer((host, port), _handler(server))
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}/v1"

    def plan(self, *actions: object) -> None:
        with self._lock:
            self._plan.extend(actions)

    def next_action(self, body: dict) -> object:
        with self._lock:
            if self._plan:
                return self._plan.pop(0)
        return self._default(body)

    def entered(self, delta: int) -> None:
        with self._lock:
            self.in_flight += delta
            self.most_in_flight = max(self.most_in_flight, self.in_flight)

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def __enter__(self) -> ScriptedLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._http.shutdown()
        self._http.server_close()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A client that went away (a killed service, a timed-out call) is expected here, not an error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler(server: ScriptedLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            headers = {k.lower(): v for k, v in self.headers.items()}
            server.entered(+1)
            try:
                self._answer(body, headers)
            finally:
                server.entered(-1)

        def _answer(self, body: dict, headers: dict[str, str]) -> None:
            seen = Seen(body, headers, "pending")  # recorded on arrival, so a request still in a delay is seen too
            server.record(seen)
            action = server.next_action(body)
            while isinstance(action, Delay):
                time.sleep(action.seconds)
                action = action.then
            if isinstance(action, Drop):
                seen.answered = "drop"
                self.close_connection = True
                self.connection.shutdown(2)
            elif isinstance(action, Reply):
                seen.answered = "reply"
                payload = {
                    "id": f"chatcmpl-{len(server.seen)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", ""),
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": action.content},
                        }
                    ],
                    "usage": {
                        "prompt_tokens": action.prompt_tokens,
                        "completion_tokens": action.completion_tokens,
                        "total_tokens": action.prompt_tokens + action.completion_tokens,
                    },
                }
                self._send(200, json.dumps(payload).encode(), {})
            elif isinstance(action, Fail):
                seen.answered = f"fail {action.status}"
                error = json.dumps(
                    {"error": {"message": action.message or f"scripted {action.status}", "type": "scripted"}}
                ).encode()
                self._send(action.status, error, action.headers)
            elif isinstance(action, Raw):
                seen.answered = "raw"
                self._send(action.status, action.body, {})
            else:
                raise TypeError(f"unknown action {action!r}")

        def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

    return Handler
