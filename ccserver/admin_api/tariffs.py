"""tariffs routes."""

from __future__ import annotations

from ccserver.admin_api.app import Route

ROUTES: list[Route] = []
