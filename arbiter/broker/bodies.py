"""Request bodies: the size limit, and the `model` field of JSON and multipart bodies
(read, and replaced when the request named a catalog key instead of the served name).

The body is read with `request.read()`, not `request.body`: Django's
DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB) would refuse audio uploads long before the
broker's own limit (`ARBITER_BROKER_MAX_BODY_BYTES`, default 25 MiB), and the broker
answers that limit itself with an OpenAI-shaped 413.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest

from arbiter.broker.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

DEFAULT_MAX_BODY_BYTES = 25 * 1024 * 1024
JSON_TYPES = ("application/json",)
MULTIPART_TYPE = "multipart/form-data"
_PART_NAME = re.compile(rb'name="([^"]*)"')

# The body with its `model` replaced by the given name, every other byte as it was.
WithModel = Callable[[str], bytes]


def max_body_bytes() -> int:
    return int(getattr(settings, "ARBITER_BROKER_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))


def read_body(request: HttpRequest) -> bytes:
    """The whole request body, or PayloadTooLarge (413) past the limit."""
    limit = max_body_bytes()
    declared = request.META.get("CONTENT_LENGTH") or ""
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(limit)
    body = request.read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLarge(limit)
    return body


def media_type(request: HttpRequest) -> str:
    return (request.content_type or "").split(";", 1)[0].strip().lower()


def json_model(request: HttpRequest, body: bytes) -> tuple[str, WithModel]:
    """The `model` of a JSON request body (415 when not JSON, 400 when not an object)."""
    if media_type(request) not in JSON_TYPES:
        raise UnsupportedMediaType(request.content_type or "", "application/json")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"The body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("The body must be a JSON object.", code="invalid_json")

    def with_model(name: str) -> bytes:
        return json.dumps({**payload, "model": name}).encode()

    return require_model(payload.get("model")), with_model


def multipart_model(request: HttpRequest, body: bytes) -> tuple[str, WithModel]:
    """The `model` field of a multipart/form-data body (audio transcriptions)."""
    if media_type(request) != MULTIPART_TYPE:
        raise UnsupportedMediaType(request.content_type or "", MULTIPART_TYPE)
    boundary = (request.content_params or {}).get("boundary", "").encode("latin-1")
    if not boundary:
        raise InvalidRequest("The multipart body names no boundary.", code="invalid_multipart")
    found = form_field(body, boundary, b"model")
    if found is None:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model")
    index, value = found
    try:
        model = require_model(value.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidRequest("The model field is not UTF-8 text.", param="model") from None

    def with_model(name: str) -> bytes:
        return replace_part_value(body, boundary, index, name.encode("utf-8"))

    return model, with_model


def form_field(body: bytes, boundary: bytes, name: bytes) -> tuple[int, bytes] | None:
    """The first simple (non-file) field called `name` of a multipart body: its part's
    index (in `body.split(b"--" + boundary)`) and its value; or None."""
    for index, part in enumerate(body.split(b"--" + boundary)):
        head, sep, value = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        disposition = next(
            (
                line
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-disposition:")
            ),
            b"",
        )
        match = _PART_NAME.search(disposition)
        if match and match.group(1) == name and b"filename=" not in disposition:
            return index, value[:-2] if value.endswith(b"\r\n") else value
    return None


def replace_part_value(body: bytes, boundary: bytes, index: int, value: bytes) -> bytes:
    """`body` with the value of part `index` (as `form_field` counts) set to `value`."""
    delimiter = b"--" + boundary
    parts = body.split(delimiter)
    head, sep, old = parts[index].partition(b"\r\n\r\n")
    parts[index] = head + sep + value + (b"\r\n" if old.endswith(b"\r\n") else b"")
    return delimiter.join(parts)


def require_model(value: object) -> str:
    if value is None or value == "":
        raise InvalidRequest("Missing required parameter: 'model'.", param="model")
    if not isinstance(value, str) or len(value) > 256:
        raise InvalidRequest("'model' must be a string of at most 256 characters.", param="model")
    return value
