"""A scripted OpenAI-compatible chat endpoint on loopback, for the agent example's real-model path.

`POST /v1/chat/completions` answers as a tool-calling model would, streamed as server-sent
`chat.completion.chunk`s (what LlamaIndex's `OpenAILike` asks for): turn n calls `plan[n]`, then it
answers `answer`. It records every request body and `Authorization` header, so a test can see which
tools and schemas the agent offered the model and which key it sent. No network: the test starts it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.conftest import serve_asgi


class ScriptedChatEndpoint:
    def __init__(self, plan: list[tuple[str, dict[str, Any]]], answer: str) -> None:
        self.plan = plan
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        self.keys: list[str] = []

    def _chunk(self, delta: dict[str, Any], finish: str | None) -> str:
        body = {
            "id": "chatcmpl-scripted",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "scripted",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(body)}\n\n"

    async def completions(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        self.keys.append(request.headers.get("authorization", ""))
        if not body.get("stream"):
            return JSONResponse({"error": {"message": "this scripted endpoint only streams"}}, status_code=400)
        turn = sum(1 for m in body["messages"] if m.get("role") == "tool")
        if turn < len(self.plan):
            name, arguments = self.plan[turn]
            call = {"index": 0, "id": f"call_{turn}", "type": "function"}
            call["function"] = {"name": name, "arguments": json.dumps(arguments)}
            chunks = [self._chunk({"role": "assistant", "tool_calls": [call]}, None), self._chunk({}, "tool_calls")]
        else:
            chunks = [self._chunk({"role": "assistant", "content": self.answer}, None), self._chunk({}, "stop")]
        return Response("".join(chunks) + "data: [DONE]\n\n", media_type="text/event-stream")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self.completions, methods=["POST"])])


@contextmanager
def serve_chat_endpoint(endpoint: ScriptedChatEndpoint) -> Iterator[str]:
    """Serve `endpoint`; yield the base URL an OpenAI client takes (`.../v1`)."""
    with serve_asgi(endpoint.app()) as (url, _server):
        yield f"{url}/v1"
