"""The route table: every endpoint of the admin API, top to bottom, module by module."""

from __future__ import annotations

from ccserver.admin_api import accounts, ledger_views, nas_clients, tariffs, tokens
from ccserver.admin_api.app import Route

ROUTES: list[Route] = [
    *accounts.ROUTES,
    *tariffs.ROUTES,
    *nas_clients.ROUTES,
    *ledger_views.ROUTES,
    *tokens.ROUTES,
]
