"""A runnable agent on Tenantry: LlamaIndex's `FunctionAgent` with the tenant's tools, bound through
LlamaIndex's MCP adapter (`llama-index-tools-mcp`) from whatever the gateway's `tools/list` returns.

Nothing here names a tool the gateway offers: a tool an upstream adds appears in the agent on its next
run. The agent opens ONE MCP session over streamable HTTP carrying the two tenant headers
(`Tenant-ID`, `Authorization: Bearer <key>`) and hands it to the adapter, so every tool call the model
makes is a `tools/call` on that session: metered, billed and audited by the gateway for that tenant.

Two models:
- a real one from an OpenAI-compatible endpoint (`OPENAI_BASE_URL`, `OPENAI_API_KEY`, `AGENT_MODEL`);
- a scripted one (`--scripted`): LlamaIndex's own `MockFunctionCallingLLM` replaying a fixed plan of
  tool calls, no network and no key. The test suite runs the agent with it.

See README.md beside this file for the commands.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2
from llama_index.core.agent.workflow import AgentOutput, FunctionAgent, ToolCallResult
from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.tools import FunctionTool
from llama_index.tools.mcp import McpToolSpec  # type: ignore[import-untyped]
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

DEFAULT_URL = "http://127.0.0.1:8000/mcp"
SYSTEM_PROMPT = (
    "You are an assistant working for one tenant of an MCP gateway. Use the tools you are given to do "
    "the task; answer briefly and say which tools you used."
)


@dataclass(frozen=True)
class Gateway:
    """Where the gateway is and who this agent is to it."""

    url: str
    tenant_id: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Tenant-ID": self.tenant_id, "Authorization": f"Bearer {self.api_key}"}


@dataclass
class ToolUse:
    """One tool call the agent made, as the gateway answered it."""

    name: str
    arguments: dict[str, Any]
    output: str
    is_error: bool


@dataclass
class AgentRun:
    offered: list[str]
    used: list[ToolUse] = field(default_factory=list)
    answer: str = ""


class GatewayRefused(Exception):
    """The gateway answered an HTTP request with an error status (a wrong key, say)."""


@asynccontextmanager
async def gateway_session(gateway: Gateway, http_timeout: float = 30) -> AsyncIterator[ClientSession]:
    """An initialised MCP session to the gateway, sending the tenant's two headers on every request."""
    # The SDK reports a refused request as "Server returned an error response" inside exception groups;
    # the gateway's own reason (`401 {"error": "invalid_credentials", ...}`) is in the HTTP response.
    refused: list[str] = []

    async def keep_refusals(response: httpx2.Response) -> None:
        if response.status_code >= 400:
            await response.aread()
            refused.append(f"{response.status_code} {response.text[:300]}")

    try:
        async with (
            httpx2.AsyncClient(
                headers=gateway.headers, timeout=http_timeout, event_hooks={"response": [keep_refusals]}
            ) as http,
            streamable_http_client(gateway.url, http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session
    except Exception as exc:
        if refused:
            raise GatewayRefused(f"the gateway refused the request: {refused[-1]}") from exc
        raise


async def tenant_tools(session: ClientSession) -> list[FunctionTool]:
    """The tenant's tools as LlamaIndex tools: exactly what `tools/list` returns now, schemas included."""
    tools: list[FunctionTool] = await McpToolSpec(client=session).to_tool_list_async()
    return tools


def model_from_environment() -> FunctionCallingLLM:
    """A chat model behind an OpenAI-compatible endpoint, from OPENAI_BASE_URL, OPENAI_API_KEY, AGENT_MODEL."""
    # Imported here: the scripted run (and the test suite) needs no OpenAI client.
    from llama_index.llms.openai_like import OpenAILike  # type: ignore[import-untyped]

    missing = [name for name in ("OPENAI_API_KEY", "AGENT_MODEL") if not os.environ.get(name)]
    if missing:
        raise SystemExit(f"set {' and '.join(missing)} (and OPENAI_BASE_URL if not api.openai.com), or use --scripted")
    model: FunctionCallingLLM = OpenAILike(
        model=os.environ["AGENT_MODEL"],
        api_base=os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
        api_key=os.environ["OPENAI_API_KEY"],
        is_chat_model=True,
        is_function_calling_model=True,
        context_window=int(os.environ.get("AGENT_CONTEXT_WINDOW", "32000")),
        timeout=float(os.environ.get("AGENT_TIMEOUT", "120")),
    )
    return model


@dataclass(frozen=True)
class Step:
    """One turn of a scripted model: call `tool` with `arguments`."""

    tool: str
    arguments: dict[str, Any]


def scripted_model(plan: Sequence[Step], answer: str) -> MockFunctionCallingLLM:
    """A deterministic tool-calling model: turn n calls plan[n], then it answers `answer`.

    Like a real model it can only pick among the tools the agent offers it; a planned tool the gateway
    did not list is an error here, which is what makes the scripted run a test of dynamic binding.
    """

    def respond(messages: Sequence[ChatMessage], **kwargs: Any) -> ChatMessage:
        done = sum(1 for m in messages if m.role == MessageRole.TOOL)
        if done >= len(plan):
            return ChatMessage(role=MessageRole.ASSISTANT, content=answer)
        step = plan[done]
        offered = {tool.metadata.name for tool in kwargs.get("tools") or []}
        if step.tool not in offered:
            raise LookupError(f"the scripted model wants {step.tool!r}, but the agent offers {sorted(offered)}")
        call = ToolCallBlock(tool_call_id=f"scripted-{done}", tool_name=step.tool, tool_kwargs=step.arguments)
        return ChatMessage(role=MessageRole.ASSISTANT, blocks=[call])

    return MockFunctionCallingLLM(response_generator=respond, is_chat_model=True)


def demo_plan(task: str) -> tuple[list[Step], str]:
    """What `--scripted` does with a task: remember it in the data store and read it back."""
    key = "agent/last-task"
    plan = [Step("data_put", {"key": key, "value": {"task": task}}), Step("data_get", {"key": key})]
    return plan, f"I stored the task under {key!r} with data_put and read it back with data_get."


def _output_text(result: ToolCallResult) -> tuple[str, bool]:
    raw = result.tool_output.raw_output
    is_error = bool(getattr(raw, "is_error", False)) or result.tool_output.is_error
    content = getattr(raw, "content", None)
    if content is not None:
        return "\n".join(getattr(block, "text", f"[{getattr(block, 'type', '?')}]") for block in content), is_error
    return str(result.tool_output.content), is_error


async def run_agent(gateway: Gateway, task: str, model: FunctionCallingLLM) -> AgentRun:
    """Bind the tenant's tools, run `task` with `model`, and report every tool call and the answer."""
    async with gateway_session(gateway) as session:
        tools = await tenant_tools(session)
        run = AgentRun(offered=[t.metadata.get_name() for t in tools])
        agent = FunctionAgent(tools=tools, llm=model, system_prompt=SYSTEM_PROMPT)
        handler = agent.run(user_msg=task)
        async for event in handler.stream_events():
            if isinstance(event, ToolCallResult):
                text, is_error = _output_text(event)
                run.used.append(ToolUse(event.tool_name, dict(event.tool_kwargs), text, is_error))
        result: AgentOutput = await handler
        run.answer = str(result.response.content or "")
        return run


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Run a task with an agent that uses a Tenantry tenant's tools.")
    p.add_argument("task", help="what the agent should do, in plain words")
    p.add_argument("--url", default=os.environ.get("TENANTRY_URL", DEFAULT_URL), help="the gateway's MCP endpoint")
    p.add_argument(
        "--tenant-id", default=os.environ.get("TENANTRY_TENANT_ID"), help="tenant id (or TENANTRY_TENANT_ID)"
    )
    p.add_argument("--key", default=os.environ.get("TENANTRY_API_KEY"), help="tenant API key (or TENANTRY_API_KEY)")
    p.add_argument(
        "--scripted",
        action="store_true",
        help="no model: a scripted one stores the task with data_put and reads it back with data_get",
    )
    p.add_argument("--json", action="store_true", help="print the run (tools offered, calls, answer) as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.tenant_id or not args.key:
        print("error: give --tenant-id and --key (or TENANTRY_TENANT_ID and TENANTRY_API_KEY)", file=sys.stderr)
        return 2
    if args.scripted:
        plan, answer = demo_plan(args.task)
        model: FunctionCallingLLM = scripted_model(plan, answer)
    else:
        model = model_from_environment()
    try:
        run = asyncio.run(run_agent(Gateway(args.url, args.tenant_id, args.key), args.task, model))
    except GatewayRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"offered": run.offered, "used": [vars(u) for u in run.used], "answer": run.answer}))
        return 0
    print(f"tools offered by the gateway: {', '.join(run.offered)}")
    for use in run.used:
        mark = "error" if use.is_error else "ok"
        print(f"  called {use.name}({json.dumps(use.arguments)}) -> {mark}: {use.output[:200]}")
    print(f"answer: {run.answer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
