"""Checks real HTTP responses against /openapi.json with jsonschema (no tests here).

Attached to an httpx client, :class:`Contract` checks every response the client receives from a
documented path: the method is documented there, the status is one the operation documents, the
headers it marks required are present, and the JSON body validates against the documented schema
(Draft 2020-12, the dialect of OpenAPI 3.1; every ``$ref`` resolved inside the document with
``referencing``; ``date-time`` checked as RFC 3339). It records each (method, path, status) it
checked, so a test can assert which documented answers it drove.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry
from referencing.jsonschema import DRAFT202012

DOCUMENT_URI = "urn:codat-hooks:openapi"
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", re.ASCII)
FORMATS = FormatChecker(formats=())


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    datetime.fromisoformat(value)  # an impossible date (02-30) raises
    return _RFC3339.fullmatch(value) is not None


Seen = tuple[str, str, int]  # (method, documented path, status)


def _pointer(*parts: str) -> str:
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


class Contract:
    """The document, and the check of responses against it."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self._registry: Registry[Any] = Registry().with_resource(
            DOCUMENT_URI, DRAFT202012.create_resource(document))
        self._paths = [(re.compile(re.sub(r"\{[^}]+\}", "[^/]+", path)), path)
                       for path in document["paths"]]
        self.seen: set[Seen] = set()

    def problems(self, pointer: str, instance: Any) -> list[str]:
        """Why ``instance`` does not validate against the schema at ``pointer`` (none: it does)."""
        validator = Draft202012Validator({"$ref": f"{DOCUMENT_URI}#{quote(pointer, safe='/~')}"},
                                         registry=self._registry, format_checker=FORMATS)
        return [f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
                for e in validator.iter_errors(instance)]

    def schema_problems(self, component: str, instance: Any) -> list[str]:
        return self.problems(_pointer("components", "schemas", component), instance)

    def request_problems(self, method: str, path: str, body: Any) -> list[str]:
        return self.problems(_pointer("paths", path, method, "requestBody", "content",
                                      "application/json", "schema"), body)

    def path_of(self, url_path: str) -> str | None:
        """The documented path ``url_path`` is an instance of (None: not a documented one)."""
        return next((path for pattern, path in self._paths if pattern.fullmatch(url_path)), None)

    def documented(self, method: str, path: str) -> set[Seen]:
        """Every (method, path, status) the document gives this operation."""
        responses = self.document["paths"][path][method]["responses"]
        return {(method, path, int(status)) for status in responses}

    async def check(self, response: httpx.Response) -> None:
        """Assert that ``response`` is one the document describes; record it."""
        request = response.request
        path = self.path_of(request.url.path)
        if path is None:
            return  # not the API: the webhook receiver, /openapi.json
        method = request.method.lower()
        where = f"{request.method} {request.url}"
        operation = self.document["paths"][path].get(method)
        assert operation is not None, f"{where}: {method} is not documented on {path}"
        await response.aread()
        status = response.status_code
        documented = operation["responses"].get(str(status))
        assert documented is not None, \
            f"{where}: {status} is not documented for {path}: {response.text[:300]}"
        for name, header in documented.get("headers", {}).items():
            if header.get("required"):
                assert name in response.headers, f"{where}: {status} without header {name}"
        assert response.headers.get("content-type") == "application/json", \
            f"{where}: {status} is {response.headers.get('content-type')}"
        problems = self.problems(_pointer("paths", path, method, "responses", str(status),
                                          "content", "application/json", "schema"),
                                 response.json())
        assert not problems, f"{where}: {status} does not match the document: {problems}\n" \
                             f"{response.text[:1000]}"
        self.seen.add((method, path, status))

    def attach(self, client: httpx.AsyncClient) -> None:
        """Check every response ``client`` receives from now on."""
        client.event_hooks["response"].append(self.check)
