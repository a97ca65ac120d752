"""Tool-poisoning screening: what in an upstream tool's definition is aimed at the model, not the user.

A tool's name, description and every string of its input schema (descriptions, titles, enum values,
defaults, property names) reach the agent's model as instructions it may follow. `screen` looks there
for the markers of a poisoned definition:

- `instruction`: text that addresses the model ("ignore previous instructions", "do not tell the
  user", "<IMPORTANT>", "before using this tool, read ..."), or asks for secrets (`~/.ssh`, `.env`,
  API keys, passwords) to be read or sent;
- `system_prompt`: references to the system prompt, the conversation or the model's own instructions;
- `other_tool`: a sibling tool of the same upstream named together with an instruction word
  ("instead", "also", "before", "whenever", "must") — a tool telling the model how to use another one;
- `invisible`: Unicode the reader cannot see but the model reads (tag characters, zero-width
  characters, bidirectional overrides, other format characters);
- `url`, `encoded`: links and encoded blobs (long base64 or hex runs) in what should be prose;
- `length`: a description longer than any honest one needs (over 2,000 characters).

Each finding names where it is (`description`, `inputSchema.properties.path.description`, ...) and
what matched, shortened. A definition with any finding is withheld from every tenant's catalog until
an admin approves it (`federation/discovery.py`). Precision and recall on a labelled corpus of
poisoned and clean definitions: `tests/federation/poisoning_corpus.py`, `bench/bench_screening.py`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

MAX_DESCRIPTION: Final = 2000

_INSTRUCTION: Final = re.compile(
    r"""
    \b(?:ignore|disregard|forget|override)\b[^.\n]{0,40}\b(?:previous|prior|above|earlier|all|other|any)\b[^.\n]{0,20}
        \b(?:instructions?|rules?|guidelines?|directions?|prompts?)\b
    | \b(?:do\s+not|don'?t|never|without)\s+
        (?:tell|inform|mention|reveal|alert|notify|show)(?:ing)?\b
        [^.\n]{0,30}\b(?:the\s+)?users?\b
    | <\s*/?\s*(?:important|instructions?|system|secret|hidden)\s*>
    | \b(?:before|prior\s+to)\s+(?:using|calling|invoking|running)\s+(?:this|any)\s+(?:tool|function)\b
    | \byou\s+(?:must|should|are\s+required\s+to|need\s+to)\s+(?:first\s+|always\s+|also\s+)?
        (?:read|call|invoke|send|include|pass|fetch|upload|forward|add|append)\b
    | \b(?:read|send|include|pass|upload|forward|append|attach|exfiltrate|leak|retrieve|collect|dump|copy|email)\b
        [^.\n]{0,60}
        (?:~/\.ssh|id_rsa|\.env\b|\.aws|mcp\.json|credentials?\b|api[\s_-]?keys?\b|passwords?\b|private\s+keys?\b
           |secrets?\b|tokens?\b|environment\s+variables|config(?:uration)?\s+file)
    | \b(?:always|must)\s+(?:call|use|invoke|run)\s+this\s+(?:tool|function)\b
    | \bbefore\s+(?:answering|responding|replying)\b
    | \botherwise\s+(?:the|this)\s+(?:tool|function)\s+(?:will\s+not|won'?t|does\s+not|cannot)\s+work\b
    | \bfollow\s+(?:any|all|the)\s+instructions\b
    | \b(?:quietly|secretly|silently|covertly)\s+(?:send|email|forward|copy|upload|post|call|read)\b
    | \b(?:never|do\s+not|don'?t)\s+(?:mention|say|reveal|disclose)\s+(?:that\s+you\b|reading|calling|using|it\b)
    | \bif\s+asked\s+about\s+(?:secrets?|credentials|passwords?|keys?)\b
    | \bthis\s+is\s+(?:very\s+)?(?:important|critical|mandatory)\b[^.\n]{0,40}\b(?:model|assistant|ai|llm)\b
    | \bas\s+an?\s+(?:ai|assistant|language\s+model)\b
    """,
    re.IGNORECASE | re.VERBOSE,
)
_SYSTEM_PROMPT: Final = re.compile(
    r"\bsystem[\s_-]?(?:prompt|message|instructions?)\b|\b(?:your|the\s+model'?s?)\s+(?:instructions|context\s+window)\b"
    r"|\bprevious\s+conversation\b|\bconversation\s+history\b",
    re.IGNORECASE,
)
_INSTRUCTION_WORD: Final = re.compile(
    r"\b(?:instead|also|always|before|after|whenever|must|first|then|redirect|replace)\b", re.IGNORECASE
)
_URL: Final = re.compile(r"\b(?:https?|ftp|data|file)://\S+|\bwww\.\S+\.\w{2,}|\bdata:[\w/+.-]+;base64,", re.IGNORECASE)
_BASE64: Final = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")
_HEX: Final = re.compile(r"\b[0-9a-fA-F]{64,}\b")
_INVISIBLE_RANGES: Final = ((0xE0000, 0xE007F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x2064), (0x2066, 0x2069))


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # instruction, system_prompt, other_tool, invisible, url, encoded, length
    where: str  # the path of the text in the definition
    detail: str  # what matched, shortened and with invisible characters spelled out

    def public(self) -> dict[str, str]:
        return {"kind": self.kind, "where": self.where, "detail": self.detail}


# JSON Schema's own keywords whose values are URIs (`"$schema": "https://json-schema.org/..."`), not prose
# a model reads: a link planted in them would do nothing, and every 2020-12 schema names one.
_SCHEMA_REFERENCES = frozenset({"$schema", "$id", "$ref"})


def _texts(definition: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(path, text) of every string a model reads in a definition."""
    yield "name", str(definition.get("name", ""))
    for key in ("title", "description"):
        if isinstance(definition.get(key), str):
            yield key, definition[key]
    stack: list[tuple[str, Any]] = [("inputSchema", definition.get("inputSchema", {}))]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if path.endswith(".properties"):
                    yield f"{path}.{key}", str(key)  # a property's own name
                stack.append((f"{path}.{key}", value))
        elif isinstance(node, list):
            stack.extend((f"{path}[{i}]", value) for i, value in enumerate(node))
        elif isinstance(node, str) and path.rsplit(".", 1)[-1] not in _SCHEMA_REFERENCES:
            yield path, node


def _invisible(text: str) -> list[str]:
    found = []
    for char in text:
        code = ord(char)
        if any(low <= code <= high for low, high in _INVISIBLE_RANGES) or (
            unicodedata.category(char) == "Cf" and char not in "\u00ad"
        ):
            found.append(f"U+{code:04X}")
    return found


def _short(text: str) -> str:
    clean = "".join(ch if ch.isprintable() else f"<U+{ord(ch):04X}>" for ch in text)
    return clean if len(clean) <= 80 else clean[:77] + "..."


def screen(definition: dict[str, Any], siblings: frozenset[str] = frozenset()) -> list[Finding]:
    """The poisoning markers in one tool definition (empty: nothing found). `siblings` are the names of
    the other tools the same upstream offers."""
    findings: list[Finding] = []
    own = str(definition.get("name", ""))
    others = [s for s in siblings if s != own and len(s) >= 3]
    for where, text in _texts(definition):
        invisible = _invisible(text)
        if invisible:
            findings.append(Finding("invisible", where, ", ".join(dict.fromkeys(invisible))[:80]))
        if where == "name":
            continue
        if where == "description" and len(text) > MAX_DESCRIPTION:
            findings.append(Finding("length", where, f"{len(text)} characters (more than {MAX_DESCRIPTION})"))
        for kind, pattern in (("instruction", _INSTRUCTION), ("system_prompt", _SYSTEM_PROMPT), ("url", _URL)):
            match = pattern.search(text)
            if match:
                findings.append(Finding(kind, where, _short(match.group(0))))
        encoded = None if where.endswith(".pattern") else (_BASE64.search(text) or _HEX.search(text))
        if encoded:  # (a schema's regex `pattern` is not prose, and may be long)
            findings.append(Finding("encoded", where, _short(encoded.group(0))))
        if others and _INSTRUCTION_WORD.search(text):
            named = [s for s in others if re.search(rf"(?<![\w-]){re.escape(s)}(?![\w-])", text)]
            if named:
                findings.append(Finding("other_tool", where, f"names {', '.join(sorted(named)[:3])}"))
    return findings
