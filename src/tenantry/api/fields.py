"""Request fields shared by the routers: strict bodies, names, and identities (subject, roles)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# A name is shown to people and stored as text: no control characters (NUL cannot even be stored).
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
# Who calls inside a tenant (an agent, a service, a person's id): printable, as a name.
Subject = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
# A tenant-defined role name, as policies name it.
Role = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")]
Roles = Annotated[list[Role], Field(max_length=32)]
# A tool name pattern (a glob over full tool names: built-ins and `<upstream>__<tool>`).
ToolPattern = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_*?.:+/%=&~@#,;!$-]+$")]
ToolScope = Annotated[list[ToolPattern], Field(max_length=200)]
