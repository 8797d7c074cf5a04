"""Request bodies and query strings into msgspec Structs, reporting every bad field at once.

msgspec stops at the first error; a user fixing a form wants them all. Each field is converted
on its own, then the Struct is built from the converted values.
"""

from __future__ import annotations

import typing
from typing import Any, TypeVar

import msgspec

from ccserver.admin_api.problems import FieldError, invalid

S = TypeVar("S", bound=msgspec.Struct)

_hints_cache: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _hints_cache.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls, include_extras=True)
        _hints_cache[cls] = hints
    return hints


def _message(error: msgspec.ValidationError) -> str:
    text = str(error)
    return text.split(" - at `", 1)[0]


def _path(error: msgspec.ValidationError) -> str:
    text = str(error)
    if " - at `$" in text:
        return text.split(" - at `$", 1)[1].rstrip("`")
    return ""


def convert(cls: type[S], data: Any, *, strict: bool = True, prefix: str = "") -> S:
    """Build `cls` from decoded JSON (or query) data, or raise a 422 naming every bad field."""
    if not isinstance(data, dict):
        raise invalid([FieldError(prefix or "body", "must be a JSON object")])
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    hints = _hints(cls)
    errors: list[FieldError] = []
    known = {field.encode_name: field for field in info.fields}
    for name in data:
        if name not in known:
            errors.append(FieldError(prefix + name, "unknown field"))
    for encode_name, field in known.items():
        if encode_name not in data:
            if field.required:
                errors.append(FieldError(prefix + encode_name, "is required"))
            continue
        try:
            msgspec.convert(data[encode_name], hints[field.name], strict=strict)
        except msgspec.ValidationError as error:
            errors.append(FieldError(prefix + encode_name + _path(error), _message(error)))
    if errors:
        raise invalid(errors)
    try:
        return msgspec.convert(data, cls, strict=strict)
    except msgspec.ValidationError as error:  # a constraint across fields
        raise invalid([FieldError(prefix + _path(error).lstrip("."), _message(error))]) from None


def decode_json(body: bytes) -> Any:
    if not body:
        raise invalid([FieldError("body", "a JSON body is required")])
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as error:
        raise invalid([FieldError("body", f"not valid JSON: {error}")]) from None
