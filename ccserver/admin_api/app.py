"""The admin API: a plain table of routes, each with the msgspec types it accepts and returns.

The same table builds the Starlette app and the OpenAPI 3.1 document, so the document always says
what the routes really accept. Handlers get the API context and a `Call` (principal, scope,
decoded body and query) and return a Struct (encoded as JSON) or a Response.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as StarletteRoute

from ccserver.actors.engine import Engine
from ccserver.admin_api.auth import (
    Permission,
    Principal,
    Role,
    Scope,
    TokenStore,
    fetch_token,
    token_digest,
)
from ccserver.admin_api.problems import ApiError, FieldError, Problem, forbidden, problem_response
from ccserver.admin_api.validation import convert, decode_json
from ccserver.config import Config
from ccserver.ledger.bridge import Bridge
from ccserver.ledger.writer import LedgerWrite, Writer
from ccserver.observability import REGISTRY, REQUEST_SECONDS, REQUESTS, get_logger

log = get_logger("ccserver.api")

BOOTSTRAP_PRINCIPAL = Principal(
    id=0,
    name="bootstrap",
    role=Role.SUPER_ADMIN,
    scope_account_id=None,
    permissions=frozenset(Permission),
)
BODY_BYTES_MAX = 64 * 1024 * 1024  # a CSV of a few hundred thousand rates


class Api:
    """What handlers work with: the engine, the ledger and the token store."""

    def __init__(
        self,
        engine: Engine,
        writer: Writer,
        bridge: Bridge,
        config: Config,
        tokens: TokenStore,
    ) -> None:
        self.engine = engine
        self.writer = writer
        self.bridge = bridge
        self.config = config
        self.tokens = tokens
        self.ready = False
        # Disconnect requests for the protocol front ends (RADIUS CoA, Diameter ASR).
        self.disconnect_send, self.disconnect_receive = trio.open_memory_channel[Any](10_000)
        # Engine operations are synchronous; a mutation that awaits the database in between
        # two engine steps holds this lock so that concurrent API calls see a consistent order.
        self.mutation_lock = trio.Lock()

    async def authenticate(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "Unauthorized", "a bearer token is required", kind="unauthorized")
        bootstrap = self.config.admin_api.bootstrap_token
        if bootstrap and msgspec_safe_equal(token, bootstrap):
            return BOOTSTRAP_PRINCIPAL
        digest = token_digest(token)
        principal = self.tokens.lookup(digest)
        now = time.monotonic()
        if principal is None and not self.tokens.recently_unknown(digest, now):
            # Perhaps issued by `ccserver token create` in another process since we loaded.
            rows = await self.bridge.run(fetch_token, digest)
            if rows:
                self.tokens.load(rows)
                principal = self.tokens.lookup(digest)
            else:
                self.tokens.remember_unknown(digest, now)
        if principal is None:
            raise ApiError(401, "Unauthorized", "unknown or revoked token", kind="unauthorized")
        return principal

    async def commit(self, item: LedgerWrite) -> bool:
        """Write to the ledger; True if applied now, False if it had been committed before."""
        return (await self.writer.write(item)).applied

    def send_disconnects(self, events: list[Any]) -> None:
        for event in events:
            try:
                self.disconnect_send.send_nowait(event)
            except trio.WouldBlock:
                log.error("disconnect_queue_full", session=event.session_id)


def msgspec_safe_equal(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


class Call:
    """One request as a handler sees it."""

    __slots__ = ("body", "path", "principal", "query", "request", "scope")

    def __init__(
        self,
        request: Request,
        principal: Principal,
        scope: Scope,
        body: Any,
        query: Any,
    ) -> None:
        self.request = request
        self.principal = principal
        self.scope = scope
        self.body = body
        self.query = query
        self.path: dict[str, str] = dict(request.path_params)

    def require(self, permission: Permission) -> None:
        if not self.principal.can(permission):
            raise forbidden(f"this token lacks the {permission.value} permission")


Handler = Callable[[Api, Call], Awaitable[Any]]


class Route(msgspec.Struct, frozen=True):
    method: str
    path: str
    handler: Handler
    name: str
    summary: str
    body: type | None = None  # JSON request body
    query: type | None = None
    response: Any = None  # a Struct type, or list[...] of one
    status: int = 200
    listing: type | None = None  # a list endpoint: items of this type
    csv_request: bool = False  # also (or only) accepts text/csv
    csv_response: bool = False  # can answer text/csv
    auth: bool = True
    errors: tuple[int, ...] = (401, 404, 422)


class Page(msgspec.Struct):
    items: list[Any]
    next_cursor: str | None


LIST_LIMIT_MAX = 1000


def _encode_response(route: Route, result: Any) -> Response:
    if isinstance(result, Response):
        return result
    return Response(
        msgspec.json.encode(result), status_code=route.status, media_type="application/json"
    )


def _endpoint(api: Api, route: Route) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        started = time.perf_counter()
        principal: Principal | None = None
        try:
            if route.auth:
                principal = await api.authenticate(request)
                scope = Scope(principal, api.engine.hierarchy)
            else:
                principal = BOOTSTRAP_PRINCIPAL
                scope = Scope(principal, api.engine.hierarchy)
            body: Any = None
            content_type = request.headers.get("content-type", "").split(";")[0].strip()
            if route.csv_request and content_type == "text/csv":
                body = await _read_body(request)
            elif route.body is not None:
                body = convert(route.body, decode_json(await _read_body(request)))
            elif route.csv_request:
                raise ApiError(
                    415, "Unsupported media type", "send text/csv", kind="unsupported-media-type"
                )
            query: Any = None
            if route.query is not None:
                query = convert(route.query, dict(request.query_params), strict=False)
            result = await route.handler(api, Call(request, principal, scope, body, query))
            response = _encode_response(route, result)
        except ApiError as error:
            response = error.response()
        except Exception:
            log.exception("api_error", route=route.name)
            response = problem_response(500, "Internal error", "see the server log")
        if route.method != "GET" and route.auth:
            log.info(
                "admin_mutation",
                route=route.name,
                path=request.url.path,
                principal=principal.name if principal is not None else None,
                role=principal.role.value if principal is not None else None,
                status=response.status_code,
            )
        REQUESTS.labels("http", route.name, str(response.status_code)).inc()
        REQUEST_SECONDS.labels("http", route.name).observe(time.perf_counter() - started)
        return response

    return endpoint


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > BODY_BYTES_MAX:
        raise ApiError(413, "Payload too large", f"at most {BODY_BYTES_MAX} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > BODY_BYTES_MAX:
            raise ApiError(413, "Payload too large", f"at most {BODY_BYTES_MAX} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _healthz(api: Api, call: Call) -> Any:
    return {"status": "ok"}


async def _readyz(api: Api, call: Call) -> Any:
    if not api.ready:
        return problem_response(503, "Not ready", "starting or stopping", kind="not-ready")
    return {"status": "ready"}


async def _metrics(api: Api, call: Call) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


async def _openapi(api: Api, call: Call) -> Response:
    return Response(
        msgspec.json.encode(openapi_document(all_routes())), media_type="application/json"
    )


class Health(msgspec.Struct):
    status: str


def service_routes() -> list[Route]:
    return [
        Route("GET", "/healthz", _healthz, "healthz", "Liveness", response=Health, auth=False,
              errors=()),
        Route("GET", "/readyz", _readyz, "readyz", "Readiness: 200 once loaded and listening",
              response=Health, auth=False, errors=(503,)),
        Route("GET", "/metrics", _metrics, "metrics", "Prometheus metrics", auth=False, errors=()),
        Route("GET", "/openapi.json", _openapi, "openapi", "This document", auth=False, errors=()),
    ]  # fmt: skip


def all_routes() -> list[Route]:
    from ccserver.admin_api import routes

    return service_routes() + routes.ROUTES


def create_app(api: Api) -> Starlette:
    by_path: dict[str, list[Route]] = {}
    for route in all_routes():
        by_path.setdefault(route.path, []).append(route)
    starlette_routes = []
    for path, routes in by_path.items():
        endpoints = {route.method: _endpoint(api, route) for route in routes}

        async def dispatch(request: Request, endpoints: Any = endpoints) -> Response:
            endpoint = endpoints.get(request.method)
            if endpoint is None:
                return problem_response(
                    405,
                    "Method not allowed",
                    f"{request.method} is not allowed here",
                    headers={"Allow": ", ".join(sorted(endpoints))},
                )
            return await endpoint(request)  # type: ignore[no-any-return]

        methods = sorted({route.method for route in routes} | {"HEAD"} - {"HEAD"})
        starlette_routes.append(StarletteRoute(path, dispatch, methods=methods + _others(methods)))
    app = Starlette(routes=starlette_routes)

    async def not_found_handler(request: Request, exc: Exception) -> Response:
        return problem_response(404, "Not found", f"no route {request.url.path}", kind="not-found")

    app.add_exception_handler(404, not_found_handler)
    return app


def _others(methods: list[str]) -> list[str]:
    # Starlette answers 405 itself for methods a route does not list; listing them all lets
    # `dispatch` answer with a problem document instead.
    return [m for m in ("GET", "POST", "PUT", "PATCH", "DELETE") if m not in methods]


# -- OpenAPI ----------------------------------------------------------------------------------

_PATH_PARAM = re.compile(r"{(\w+)(?::\w+)?}")


def openapi_document(routes: list[Route]) -> dict[str, Any]:
    types: list[Any] = [Problem]
    for route in routes:
        for candidate in (route.body, route.response):
            if candidate is not None:
                types.append(candidate)
        if route.listing is not None:
            types.append(route.listing)
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    refs = dict(zip(map(id, types), schemas, strict=True))
    paths: dict[str, Any] = {}
    for route in routes:
        path = _PATH_PARAM.sub(r"{\1}", route.path)
        operation: dict[str, Any] = {"operationId": route.name, "summary": route.summary}
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PATH_PARAM.findall(route.path)
        ]
        if route.query is not None:
            query_schema = msgspec.json.schema(route.query)
            query_props = _resolve(query_schema)["properties"]
            for name, schema in query_props.items():
                parameters.append(
                    {"name": name, "in": "query", "required": False, "schema": schema}
                )
        if parameters:
            operation["parameters"] = parameters
        content: dict[str, Any] = {}
        if route.body is not None:
            content["application/json"] = {"schema": refs[id(route.body)]}
        if route.csv_request:
            content["text/csv"] = {"schema": {"type": "string"}}
        if content:
            operation["requestBody"] = {"required": True, "content": content}
        responses: dict[str, Any] = {}
        ok: dict[str, Any] = {"description": "success"}
        if route.listing is not None:
            page = {
                "type": "object",
                "properties": {
                    "items": {"type": "array", "items": refs[id(route.listing)]},
                    "next_cursor": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                },
                "required": ["items", "next_cursor"],
            }
            ok["content"] = {"application/json": {"schema": page}}
        elif route.response is not None:
            ok["content"] = {"application/json": {"schema": refs[id(route.response)]}}
        if route.csv_response:
            ok.setdefault("content", {})["text/csv"] = {"schema": {"type": "string"}}
        responses[str(route.status)] = ok
        problem = {"application/problem+json": {"schema": refs[id(Problem)]}}
        for status in sorted(set(route.errors) | ({400, 413, 415} if content else set())):
            responses[str(status)] = {
                "description": _REASONS.get(status, "error"),
                "content": problem,
            }
        if route.auth:
            operation["security"] = [{"bearer": []}]
        operation["responses"] = responses
        paths.setdefault(path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "ccserver admin API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    name = ref.rsplit("/", 1)[1]
    return schema["$defs"][name]  # type: ignore[no-any-return]


_REASONS = {
    400: "bad request",
    401: "no valid token",
    403: "the token lacks a permission",
    404: "not found, or outside the token's scope",
    409: "conflicts with existing data",
    413: "body too large",
    415: "unsupported media type",
    422: "invalid fields",
    503: "not ready",
}

__all__ = ["Api", "Call", "FieldError", "Page", "Route", "create_app", "openapi_document"]
