"""The OpenAPI-to-tool mapping on documents a real API would not serve: what a hostile or sloppy one
cannot make the gateway do."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tenantry.errors import BadRequest
from tenantry.federation.openapi_schema import operations, parse_document, server_url

OK = {"200": {"description": "ok"}}


def doc(paths: dict[str, Any], **components: Any) -> dict[str, Any]:
    return {"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": paths, "components": components}


def test_a_self_referencing_schema_is_cut_and_a_deep_one_bounded() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(3000):
        deep = {"type": "object", "properties": {"x": deep}}
    body = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Node"}}}}
    found = operations(
        doc(
            {"/n": {"post": {"operationId": "make", "requestBody": body, "responses": OK}}},
            schemas={
                "Node": {"type": "object", "properties": {"next": {"$ref": "#/components/schemas/Node"}, "deep": deep}}
            },
        ),
        {},
    )
    schema = found[0].definition["inputSchema"]["properties"]["body"]
    assert schema["type"] == "object"
    assert schema["properties"]["next"] == {}  # the reference back to Node: the cycle is cut there
    assert "$ref" not in json.dumps(schema)


def test_names_are_mcp_safe_never_hold_the_namespace_separator_and_are_unique() -> None:
    paths = {
        "/a/{id}": {"get": {"operationId": "read_item_items__item_id__get", "responses": OK}},
        "/b": {
            "get": {"operationId": "read item!", "responses": OK},
            "post": {"operationId": "read_item!", "responses": OK},
        },
        "/c": {"put": {"operationId": "x" * 200, "responses": OK}},
    }
    names = [op.tool for op in operations(doc(paths), {})]
    assert names[:3] == ["read_item_items_item_id_get", "read_item", "read_item_2"]
    assert len(names[3]) == 64
    assert all("__" not in name for name in names)


def test_a_name_in_two_places_is_qualified_and_credential_headers_are_not_offered() -> None:
    params = [
        {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}},
        {"name": "id", "in": "query", "schema": {"type": "string"}},
        {"name": "X-Api-Key", "in": "header", "schema": {"type": "string"}},
        {"name": "X-Trace", "in": "header", "schema": {"type": "string"}},
        {"name": "session", "in": "cookie", "schema": {"type": "string"}},
    ]
    found = operations(
        doc({"/i/{id}": {"get": {"parameters": params, "responses": OK}}}), {}, credential_headers=["x-api-key"]
    )
    schema = found[0].definition["inputSchema"]
    assert set(schema["properties"]) == {"id__path", "id__query", "X-Trace"}
    assert schema["required"] == ["id__path"]
    assert found[0].tool == "get_i_id"


def test_an_operation_whose_body_is_not_json_is_left_out() -> None:
    form = {"content": {"multipart/form-data": {"schema": {"type": "object"}}}}
    paths = {
        "/up": {"post": {"operationId": "upload", "requestBody": form, "responses": OK}},
        "/x": {"get": {"responses": OK}},
    }
    assert [op.tool for op in operations(doc(paths), {})] == ["get_x"]


@pytest.mark.parametrize(
    "text",
    ["a: &a [1, 2]\nb: [*a, *a, *a]\n", "[" * 5000, "just text", "{"],
    ids=["yaml-alias", "too-deep", "scalar", "broken"],
)
def test_documents_that_are_not_plain_json_or_yaml_objects_are_refused(text: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_document(text)
    assert caught.value.code == "invalid_openapi_document"


def test_the_server_url_resolves_against_the_document_and_its_variables_take_their_defaults() -> None:
    servers = [
        {
            "url": "https://{region}.api.example.com/v{major}",
            "variables": {"region": {"default": "eu"}, "major": {"default": "2"}},
        }
    ]
    assert (
        server_url({"servers": servers}, "https://docs.example.com/openapi.json", fetched=True)
        == "https://eu.api.example.com/v2"
    )
    assert (
        server_url({"servers": [{"url": "/v1"}]}, "https://x.example.com/spec/openapi.json", fetched=True)
        == "https://x.example.com/v1"
    )
    assert server_url({}, "https://x.example.com/spec/openapi.json", fetched=True) == "https://x.example.com/"
    assert server_url({}, "https://x.example.com/base", fetched=False) == "https://x.example.com/base"
