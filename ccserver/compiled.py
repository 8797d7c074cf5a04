"""The engine's modules compiled to C with mypyc, and when the compiled code is used.

`make` builds these modules (setup.py, `build_ext --inplace`) into extension modules beside their
sources, which Python then imports instead of the sources. They share one native library
(`ccserver/compiled__mypyc*.so`) and call each other's compiled code directly, so they are used
together or not at all. A build that made every extension writes the SHA-256 of the sources it
compiled to `compiled.sha256`; the extensions are used only if the sources are still those and
CCSERVER_PURE_PYTHON is not set. Otherwise all of them load from their sources: after an edit not
rebuilt yet, or on a machine without a C compiler (the build then skips the extensions).

This module is read by setup.py on its own: it imports nothing of ccserver.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# The hot path of every call: rating, the accounts, the engine and the RADIUS codec (whose input
# is bytes from the socket, checked by the codec itself). Modules that parse typed input at the
# edges (money, messages) stay in Python: compiled code checks argument types itself and would
# raise TypeError where they raise their own errors. So do the modules of msgspec structs
# (rating/rate.py, actors/session.py, actors/messages.py): mypyc builds a struct class without
# its class options (frozen, gc=False), so it would neither be hashable nor stay untracked.
MODULES = (
    "ccserver.rating.prefix_index",
    "ccserver.rating.tariff",
    "ccserver.actors.account",
    "ccserver.actors.hierarchy",
    "ccserver.actors.engine",
    "ccserver.radius.codec",
)
GROUP = "ccserver.compiled"
PURE_PYTHON_VARIABLE = "CCSERVER_PURE_PYTHON"

_PACKAGE_DIR = Path(__file__).resolve().parent
RECORD = _PACKAGE_DIR / "compiled.sha256"


def source_of(module: str) -> Path:
    return _PACKAGE_DIR.parent.joinpath(*module.split(".")).with_suffix(".py")


def extension_of(module: str) -> Path | None:
    source = source_of(module)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = source.with_suffix(suffix)
        if candidate.exists():
            return candidate
    return None


def pure_python_asked() -> bool:
    """CCSERVER_PURE_PYTHON set (to anything but 0): build nothing, run every module from source."""
    return os.environ.get(PURE_PYTHON_VARIABLE, "") not in ("", "0")


def source_digests() -> dict[str, str]:
    return {m: hashlib.sha256(source_of(m).read_bytes()).hexdigest() for m in MODULES}


def _state() -> tuple[bool, str]:
    if pure_python_asked():
        return False, f"source ({PURE_PYTHON_VARIABLE} is set)"
    try:
        record = json.loads(RECORD.read_text())
    except (OSError, ValueError):
        return False, "source (not compiled: run make)"
    for module, digest in source_digests().items():
        if extension_of(module) is None:
            return False, f"source ({module} is not compiled: run make)"
        if record.get(module) != digest:
            return False, f"source ({module} changed since it was compiled: run make)"
    return True, "compiled (mypyc)"


class _FromSource(importlib.abc.MetaPathFinder):
    """Finds the compiled modules' sources before the import system finds their extensions."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, source_of(fullname))


ACTIVE = False
STATE = "not checked"


def install() -> None:
    """Decide, once and before any of MODULES is imported, whether the extensions are used."""
    global ACTIVE, STATE
    if STATE != "not checked":
        return
    assert not any(module in sys.modules for module in MODULES), "install() comes first"
    ACTIVE, STATE = _state()
    if not ACTIVE:
        sys.meta_path.insert(0, _FromSource())
