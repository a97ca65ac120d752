"""The MCP face of the gateway and the one tool-call pipeline every path goes through.

    server.py    the SDK's low-level Server, whose handlers answer per tenant; the MCP routes
    fastpath.py  stateless JSON tools/call answered without the SDK's per-request transport (same answers)
    relay.py     what an upstream sends during a call, relayed to the agent that made it
    catalog.py   the tools a caller may see: built-ins plus federated upstream tools
    calls.py     one call: catalog -> validate -> meter -> execute -> ledger, for MCP and REST alike

Upstreams are reached through `federation/`; built-in tools live in `tools/`.
"""
