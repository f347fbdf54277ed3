"""Request bodies checked the way Codat's spec describes them, with Codat-style 400s."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from service.sandbox.errors import CodatError
from service.sandbox.platforms import PLATFORMS, Platform

# Codat removes characters outside the name pattern instead of refusing the request:
# "Company (Codat[1])" becomes "Company Codat1" (create-company description).
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9\s\-',&@.?!]")
MAX_TAGS = 10
MAX_TAG_KEY = 27
MAX_TAG_VALUE = 100

Problems = list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class CompanyFields:
    """The fields a company request set; ``None`` means "not in the request"."""

    name: str | None
    description: str | None
    tags: dict[str, str] | None


def _refuse(problems: Problems) -> CodatError:
    text = "; ".join(f"{item}: {message}" for item, message in problems)
    return CodatError(400, f"Validation failed - {text}", errors=problems)


def _name(raw: Any, problems: Problems) -> str | None:
    if not isinstance(raw, str):
        problems.append(("name", "name is required and must be a string"))
        return None
    name = _NOT_IN_NAME.sub("", raw).strip()
    if not name:
        problems.append(("name", "name must contain at least one allowed character"))
    return name


def _tags(raw: Any, problems: Problems) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(("tags", "tags must be an object of string values"))
        return {}
    if len(raw) > MAX_TAGS:
        problems.append(("tags", f"at most {MAX_TAGS} tags are allowed"))
    for key, value in raw.items():
        if not 1 <= len(key) <= MAX_TAG_KEY:
            problems.append((f"tags.{key}", f"a tag key has 1 to {MAX_TAG_KEY} characters"))
        if not isinstance(value, str) or len(value) > MAX_TAG_VALUE:
            problems.append((f"tags.{key}",
                             f"a tag value is a string of at most {MAX_TAG_VALUE} characters"))
    return dict(raw)


def _description(raw: Any, problems: Problems) -> str:
    if raw is not None and not isinstance(raw, str):
        problems.append(("description", "description must be a string"))
        return ""
    return raw or ""


def company_fields(body: Any, *, partial: bool) -> CompanyFields:
    """Check a create/replace (``partial=False``) or update (``partial=True``) body.

    In an update, an absent field is left alone; ``tags`` null or ``{}`` wipes the tags.
    """
    if not isinstance(body, dict):
        raise _refuse([("body", "the request body must be a JSON object")])
    problems: Problems = []
    name = None
    if not partial or "name" in body:
        name = _name(body.get("name"), problems)
    description = None
    if not partial or "description" in body:
        description = _description(body.get("description"), problems)
    tags = None
    if not partial or "tags" in body:
        tags = _tags(body.get("tags"), problems)
    if problems:
        raise _refuse(problems)
    return CompanyFields(name, description, tags)


def platform_from(body: Any) -> Platform:
    """The platform named by ``platformKey``; an unknown or malformed key is a 400."""
    key = body.get("platformKey") if isinstance(body, dict) else None
    if not isinstance(key, str) or not re.fullmatch(r"[a-z]{4}", key):
        raise _refuse([("platformKey", "platformKey must be a 4-letter platform key")])
    platform = PLATFORMS.get(key)
    if platform is None:
        raise CodatError(400, f"Integration '{key}' is not enabled or does not exist.",
                         errors=[("platformKey", f"unknown platform key {key}")])
    return platform


def unlink_status(body: Any) -> None:
    """The unlink body must be ``{"status": "Unlinked"}`` (the only change Codat documents)."""
    if not isinstance(body, dict) or set(body) - {"status"}:
        raise _refuse([("body", 'the body is {"status": "Unlinked"}')])
    if body.get("status") != "Unlinked":
        raise _refuse([("status", "only the status Unlinked can be set")])
