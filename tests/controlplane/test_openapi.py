"""The API documents itself: an OpenAPI 3 schema, and interactive docs that work offline."""

from __future__ import annotations

import json
import re
from html import unescape

import pytest
from django.core.management import call_command

from controlplane.audit import Actor
from registry import services

pytestmark = pytest.mark.django_db

V1_OPERATIONS = {
    ("/api/v1/models/", "get"),
    ("/api/v1/models/", "post"),
    ("/api/v1/models/{name}/", "get"),
    ("/api/v1/models/{model_name}/versions/", "get"),
    ("/api/v1/models/{model_name}/versions/", "post"),
    ("/api/v1/models/{model_name}/versions/{version}/", "get"),
    ("/api/v1/models/{model_name}/versions/{version}/", "delete"),
    ("/api/v1/models/{model_name}/versions/{version}/artifact/", "get"),
    ("/api/v1/audit/", "get"),
    ("/api/v1/tokens/", "get"),
    ("/api/v1/tokens/", "post"),
    ("/api/v1/tokens/{id}/revoke/", "post"),
}


@pytest.fixture
def schema(api) -> dict:
    response = api.get("/api/schema/?format=json")
    assert response.status_code == 200
    return json.loads(response.content)


def test_the_schema_is_openapi_3_with_every_v1_operation(schema):
    assert schema["openapi"].startswith("3.")
    operations = {(path, verb) for path, item in schema["paths"].items() for verb in item}
    assert operations >= V1_OPERATIONS


def test_operations_are_grouped_by_resource_with_described_tags(schema):
    """Interactive docs list one section per resource, not all 46 operations under "v1"."""
    tags = {
        path: {tag for operation in item.values() if isinstance(operation, dict) for tag in operation["tags"]}
        for path, item in schema["paths"].items()
    }
    assert tags["/api/v1/models/{model_name}/versions/"] == {"models"}
    assert tags["/api/v1/deployments/{id}/rollback/"] == {"deployments"}
    assert tags["/api/v1/audit/export/"] == {"audit"}
    declared = {tag["name"] for tag in schema["tags"] if tag.get("description")}
    assert set().union(*tags.values()) <= declared


def test_the_schema_documents_the_upload_form_and_bearer_tokens(schema):
    upload = schema["paths"]["/api/v1/models/{model_name}/versions/"]["post"]
    form = upload["requestBody"]["content"]["multipart/form-data"]["schema"]
    fields = schema["components"]["schemas"][form["$ref"].rsplit("/", 1)[1]]
    assert fields["properties"]["artifact"]["format"] == "binary"
    assert {"artifact", "sha256", "signature", "metadata"} <= set(fields["properties"])
    assert {"201", "400", "413"} <= set(upload["responses"])
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token from the web UI (API tokens) or `manage.py create_api_token`.",
    }


def test_the_versions_list_documents_its_filter_and_pagination(schema):
    parameters = {p["name"] for p in schema["paths"]["/api/v1/models/{model_name}/versions/"]["get"]["parameters"]}
    assert {"status", "page", "page_size"} <= parameters
    audit = {p["name"] for p in schema["paths"]["/api/v1/audit/"]["get"]["parameters"]}
    assert {"actor", "action", "target", "outcome", "since", "until", "page", "page_size"} <= audit


def test_the_schema_generates_without_warnings(tmp_path):
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))


def test_the_interactive_docs_load_nothing_from_outside(api):
    response = api.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "/static/slipway/swagger.js" in html  # starts Swagger UI: no inline script under our CSP
    assert "<script>" not in html and "<style" not in html
    assert not re.search(r"""(?:src|href|url)\s*[=:]\s*["'](?:https?:)?//""", html), "an external URL"
    # (the page's random CSRF token is left out: once in a few hundred runs it spelled "cDn")
    without_token = re.sub(r'data-csrf-token="[^"]*"', "", html)
    assert not re.search(r"cdn|unpkg|jsdelivr|googleapis|cloudflare", without_token, re.IGNORECASE)
    swagger_settings = json.loads(unescape(re.search(r'data-settings="([^"]*)"', html)[1]))
    assert swagger_settings["validatorUrl"] is None  # Swagger UI would otherwise send the schema URL to swagger.io
    assets = re.findall(r"""(?:src|href)="(/static/[^"]+)\"""", html)
    assert len(assets) >= 3
    for asset in assets:
        served = api.get(asset)
        assert served.status_code == 200, asset
        served.close()


def test_options_describes_what_a_post_takes_as_the_schema_does(api, alice):
    """OPTIONS lists the fields a POST takes (from the same declaration as the schema's request
    body), not the fields of what it answers, which are all read-only."""
    services.create_model("iris", "", actor=Actor(user=alice))

    upload = api.options("/api/v1/models/iris/versions/").json()["actions"]["POST"]
    assert set(upload) == {"artifact", "sha256", "signature", "metadata"}
    assert upload["artifact"]["required"] is True and upload["artifact"]["type"] == "file upload"
    assert not any(field["read_only"] for field in upload.values())

    deploy = api.options("/api/v1/deployments/").json()["actions"]["POST"]
    assert {"model", "environment", "version", "reason"} <= set(deploy)
    assert deploy["model"]["required"] is True

    assert api.options("/api/v1/builds/1/cancel/").json()["actions"]["POST"] == {}  # takes no body
    model = api.options("/api/v1/models/").json()["actions"]["POST"]  # nothing declared: the serializer's own
    assert {name for name, field in model.items() if not field["read_only"]} == {"name", "description"}


def response_schema(schema: dict, path: str, verb: str, status: str) -> dict:
    """The JSON schema of one documented answer, its $ref (and a paginated list's items) resolved."""

    def resolve(node):
        if "$ref" in node:
            return schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
        return node

    answer = schema["paths"][path][verb]["responses"][status]
    return resolve(answer["content"]["application/json"]["schema"])


def test_the_tokens_list_and_revoke_are_documented_as_they_answer(schema, api):
    """Listing tokens answers 200 with a page of tokens (no secret), revoking takes no body and answers 200:
    the schema said 201 with a new token's secret for both, and a token request as revoke's body."""
    listed = response_schema(schema, "/api/v1/tokens/", "get", "200")
    items = listed["properties"]["results"]["items"]["$ref"].rsplit("/", 1)[1]
    assert items == "APIToken" and "token" not in schema["components"]["schemas"]["APIToken"]["properties"]
    assert "201" not in schema["paths"]["/api/v1/tokens/"]["get"]["responses"]
    assert api.get("/api/v1/tokens/").status_code == 200

    revoke = schema["paths"]["/api/v1/tokens/{id}/revoke/"]["post"]
    assert "requestBody" not in revoke and "201" not in revoke["responses"]
    assert revoke["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/APIToken")
    created = schema["paths"]["/api/v1/tokens/"]["post"]["responses"]["201"]
    assert created["content"]["application/json"]["schema"]["$ref"].endswith("/NewAPIToken")


def test_an_environment_that_promotes_from_none_is_documented_as_null(schema, api):
    assert api.post("/api/v1/environments/", {"name": "dev"}, format="json").json()["promotes_from"] is None
    promotes_from = schema["components"]["schemas"]["Environment"]["properties"]["promotes_from"]
    assert promotes_from.get("nullable") is True


def test_every_operation_documents_its_errors_as_json_with_a_message(schema):
    """Scripts read from the schema which errors to expect and what their body holds."""
    error = schema["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"error", "code"} and "fields" in error["properties"]
    for path, item in schema["paths"].items():
        for verb, operation in item.items():
            responses = operation["responses"]
            expected = {"401", "403", "429"}
            if "{" in path:
                expected.add("404")
            if verb in ("post", "patch", "delete"):
                expected |= {"400", "409"}
            if "requestBody" in operation:
                expected |= {"400", "413", "415"}
            assert expected <= set(responses), (verb, path, expected - set(responses))
            for status, answer in responses.items():
                if int(status) >= 400 and int(status) not in (412, 416):
                    body = answer["content"]["application/json"]["schema"]
                    assert body == {"$ref": "#/components/schemas/Error"}, (verb, path, status)
                    assert answer["description"], (verb, path, status)
    deploy = schema["paths"]["/api/v1/deployments/"]["post"]["responses"]
    assert "404" in deploy  # an unknown environment or model, though the URL names none
    upload = schema["paths"]["/api/v1/models/{model_name}/versions/"]["post"]["responses"]
    assert {"408", "411", "507"} <= set(upload)
