"""Federation: a tenant's own upstream MCP servers, behind the gateway. Every upstream call happens here.

    registry.py    the `upstreams` rows, pinned tool definitions and drift log (tenant-bound, under RLS)
    ssrf.py        which addresses an upstream URL may reach, checked at registration and at connect
    discovery.py   each tenant's upstream offerings: listed, cached, pinned, withheld on drift
    offerings.py   what they are behind the gateway: namespaced tools, prompts, resources, templates
    pool.py        one pooled session per (tenant, upstream), each behind a circuit breaker
    session.py     what one session can be asked, over either transport
    failures.py    how an upstream fails: UpstreamError, the breaker, a one-line reason
    link.py        that session over streamable HTTP: the gateway's own lean MCP client
    http1.py       the keep-alive HTTP/1.1 client the link runs on
    changes.py     what the database announces about upstreams, applied to the cache and the pool
    cli.py         `tenantry upstream ...`

The gateway's call pipeline (`gateway/calls.py`) sees an upstream tool as one
more catalog entry (`offerings.UpstreamTool`, `UpstreamPrompt`, `UpstreamResource`); nothing above this package
knows how an upstream is reached.
"""
