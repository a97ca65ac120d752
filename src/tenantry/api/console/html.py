"""The console's HTML: one page layout, forms that carry the CSRF token, tables, and the stylesheet.

Plain string building with every value escaped here (`esc`), so no template engine is needed; the
Content-Security-Policy the observer sets on HTML (`api/middleware.py`) allows only this origin's
stylesheet, so there is no inline style anywhere (SVG presentation attributes are not styles).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from fastapi.responses import HTMLResponse

from tenantry.api.console.sessions import Session

STYLESHEET_PATH: Final = "/console/static/console.css"
CONSOLE_CSP: Final = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

CSS: Final = """
:root { --ink: #1d2330; --muted: #667085; --line: #d0d5dd; --accent: #2457c5; --bad: #b42318; --ok: #067647; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, sans-serif; color: var(--ink); background: #f6f7f9; }
header {
  display: flex;
  gap: 1.5rem;
  align-items: center;
  padding: .6rem 1.5rem;
  background: var(--ink);
  color: #fff;
}
header a { color: #fff; text-decoration: none; }
header .brand { font-weight: 700; }
header form { margin-left: auto; }
main { max-width: 1180px; margin: 1.2rem auto; padding: 0 1.5rem; }
h1 { font-size: 1.4rem; margin: .2rem 0 1rem; }
h2 { font-size: 1.1rem; margin: 1.4rem 0 .5rem; }
section {
  background: #fff;
  border: 1px solid var(--line);
  border-radius: 6px;
  padding: .8rem 1rem;
  margin-bottom: 1rem;
}
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 600; }
form.inline { display: inline; }
form.row { display: flex; flex-wrap: wrap; gap: .5rem; align-items: end; margin: .4rem 0; }
label { display: flex; flex-direction: column; font-size: .85rem; color: var(--muted); }
input, select, textarea { font: inherit; padding: .25rem .4rem; border: 1px solid var(--line); border-radius: 4px; }
textarea { width: 100%; min-height: 14rem; font-family: ui-monospace, monospace; font-size: 12px; }
button {
  font: inherit;
  padding: .3rem .8rem;
  border: 1px solid var(--accent);
  background: var(--accent);
  color: #fff;
  border-radius: 4px;
  cursor: pointer;
}
button.quiet { background: #fff; color: var(--accent); }
button.danger { background: var(--bad); border-color: var(--bad); }
nav.tabs a { margin-right: 1rem; }
.muted { color: var(--muted); }
.notice {
  padding: .5rem .8rem;
  border-radius: 4px;
  background: #ecfdf3;
  border: 1px solid #abefc6;
  margin-bottom: 1rem;
}
.error {
  padding: .5rem .8rem;
  border-radius: 4px;
  background: #fef3f2;
  border: 1px solid #fecdca;
  margin-bottom: 1rem;
}
.secret {
  font-family: ui-monospace, monospace;
  font-size: 1rem;
  background: #fffaeb;
  padding: .4rem;
  border: 1px dashed #b54708;
  word-break: break-all;
}
.status-ok, .status-active { color: var(--ok); font-weight: 600; }
.status-fail, .status-suspended, .status-killed { color: var(--bad); font-weight: 600; }
pre { background: #f2f4f7; padding: .5rem; overflow: auto; font-size: 12px; max-height: 24rem; }
.diff del { background: #fee4e2; text-decoration: none; display: block; }
.diff ins { background: #dcfae6; text-decoration: none; display: block; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 1rem; }
svg.plot { width: 100%; height: auto; background: #fff; }
svg.plot text { font: 10px system-ui, sans-serif; fill: var(--muted); }
.meter { width: 14rem; }
figure { margin: 0; } figcaption { font-weight: 600; margin-bottom: .2rem; }
"""


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def csrf_field(session: Session) -> str:
    return f'<input type="hidden" name="csrf" value="{esc(session.csrf)}">'


def form(
    session: Session, action: str, inner: str, *, button: str, kind: str = "", css: str = "row", confirm: str = ""
) -> str:
    """A POST form carrying the session's CSRF token."""
    label = f'<button type="submit" class="{esc(kind)}" data-confirm="{esc(confirm)}">{esc(button)}</button>'
    return f'<form method="post" action="{esc(action)}" class="{css}">{csrf_field(session)}{inner}{label}</form>'


def field(
    name: str, label: str, value: object = "", *, kind: str = "text", required: bool = False, size: int = 0
) -> str:
    attrs = f' required size="{size}"' if required and size else (" required" if required else "")
    if size and not required:
        attrs = f' size="{size}"'
    return f'<label>{esc(label)}<input type="{kind}" name="{esc(name)}" value="{esc(value)}"{attrs}></label>'


def choice(
    name: str, label: str, options: Iterable[str] | Mapping[str, str], selected: str | None = None, *, blank: str = ""
) -> str:
    """A select; `options` are values, or value -> what the admin reads."""
    pairs = options.items() if isinstance(options, Mapping) else ((option, option) for option in options)
    opts = [f'<option value="">{esc(blank)}</option>'] if blank else []
    for value, text in pairs:
        chosen = " selected" if value == selected else ""
        opts.append(f'<option value="{esc(value)}"{chosen}>{esc(text)}</option>')
    return f'<label>{esc(label)}<select name="{esc(name)}">{"".join(opts)}</select></label>'


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, empty: str = "None yet.") -> str:
    """`rows` hold HTML already (escape values with `esc`)."""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="muted">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def status(value: object) -> str:
    return f'<span class="status-{esc(value)}">{esc(value)}</span>'


def link(href: str, text: object) -> str:
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def messages(query: Mapping[str, str]) -> str:
    """The notice or error a redirect after a change carries (`?notice=` / `?error=`)."""
    out = ""
    if query.get("notice"):
        out += f'<div class="notice" role="status">{esc(query["notice"][:500])}</div>'
    if query.get("error"):
        out += f'<div class="error" role="alert">{esc(query["error"][:500])}</div>'
    return out


def page(title: str, body: str, session: Session | None, *, status_code: int = 200) -> HTMLResponse:
    """A whole page; signed in, with the navigation and the sign-out button."""
    nav = ""
    if session is not None:
        out = form(session, "/console/sign-out", "", button="Sign out", kind="quiet", css="inline")
        nav = f'<a href="/console/tenants">Tenants</a>{out}'
    doc = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)} · Tenantry console</title>"
        f'<link rel="stylesheet" href="{STYLESHEET_PATH}"></head><body>'
        f'<header><a class="brand" href="/console/tenants">Tenantry</a>{nav}</header>'
        f"<main><h1>{esc(title)}</h1>{body}</main></body></html>"
    )
    # A page names tenants, keys and usage: no cache may keep it. Its own policy on top of the observer's
    # HTML one (a browser enforces both): no script at all, styles from this origin, forms to it.
    headers = {"Cache-Control": "no-store", "Content-Security-Policy": CONSOLE_CSP}
    return HTMLResponse(doc, status_code=status_code, headers=headers)
