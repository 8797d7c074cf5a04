"""RFC 9457 problem responses: every error the API returns is one of these."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from starlette.responses import Response

PROBLEM_TYPE_BASE = "https://ccserver.dev/problems/"


class FieldError(msgspec.Struct, frozen=True):
    field: str
    message: str


class Problem(msgspec.Struct, omit_defaults=True):
    type: str
    title: str
    status: int
    detail: str = ""
    errors: list[FieldError] = msgspec.field(default_factory=list)


class ApiError(Exception):
    """Raised by handlers; the app turns it into a problem response."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str = "",
        *,
        kind: str | None = None,
        errors: list[FieldError] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.kind = kind or title.lower().replace(" ", "-")
        self.errors = errors or []

    def response(self) -> Response:
        return problem_response(self.status, self.title, self.detail, self.kind, self.errors)


def problem_response(
    status: int,
    title: str,
    detail: str = "",
    kind: str | None = None,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = Problem(
        type=PROBLEM_TYPE_BASE + (kind or title.lower().replace(" ", "-")),
        title=title,
        status=status,
        detail=detail,
        errors=errors or [],
    )
    return Response(
        msgspec.json.encode(body),
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


def invalid(errors: list[FieldError], detail: str = "") -> ApiError:
    return ApiError(
        422,
        "Invalid request",
        detail or "; ".join(f"{e.field}: {e.message}" for e in errors),
        kind="invalid-request",
        errors=errors,
    )


def not_found(what: str = "resource") -> ApiError:
    # Out-of-scope objects answer this too: a 403 would tell the caller that they exist.
    return ApiError(404, "Not found", f"no such {what}", kind="not-found")


def conflict(detail: str) -> ApiError:
    return ApiError(409, "Conflict", detail, kind="conflict")


def forbidden(detail: str) -> ApiError:
    return ApiError(403, "Forbidden", detail, kind="forbidden")


def field_error(field: str, message: str) -> ApiError:
    return invalid([FieldError(field, message)])


def encode(value: Any) -> bytes:
    return msgspec.json.encode(value)


T = TypeVar("T")


class FieldErrors:
    """The field errors of several checks, gathered so that one response names every bad field."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def check(self, checked: Callable[[], T], default: T) -> T:
        """`checked()`, or `default` with its field errors kept when it raises ApiError."""
        try:
            return checked()
        except ApiError as error:
            self.errors.extend(error.errors)
            return default

    def add(self, errors: list[FieldError]) -> None:
        self.errors.extend(errors)

    def raise_if_any(self) -> None:
        if self.errors:
            raise invalid(self.errors)
