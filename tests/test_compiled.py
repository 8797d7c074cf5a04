"""ccserver/compiled.py: the compiled engine modules are used only as built from these sources."""

from __future__ import annotations

import gc
import importlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import msgspec
import pytest

from ccserver import compiled
from ccserver.actors import engine
from tests.test_engine import World, granted


def state_in_a_new_process(**environment: str) -> list[str]:
    code = (
        "import ccserver, ccserver.actors.engine as e;"
        " print(ccserver.compiled.ACTIVE, e.__file__, ccserver.compiled.STATE, sep='\\n')"
    )
    env = {**os.environ, **environment}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return result.stdout.splitlines()


def test_the_pure_python_variable_loads_every_module_from_source() -> None:
    active, path, state = state_in_a_new_process(**{compiled.PURE_PYTHON_VARIABLE: "1"})
    assert active == "False" and path.endswith("engine.py")
    assert compiled.PURE_PYTHON_VARIABLE in state


def test_the_modules_in_use_are_those_the_state_names() -> None:
    in_use = {name: Path(importlib.import_module(name).__file__ or "") for name in compiled.MODULES}
    if compiled.ACTIVE:
        assert all(path.suffix == ".so" for path in in_use.values()), in_use
    else:
        assert all(path.suffix == ".py" for path in in_use.values()), in_use
    assert Path(engine.__file__).suffix == (".so" if compiled.ACTIVE else ".py")


def test_a_source_changed_since_the_build_is_run_from_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digests = compiled.source_digests()
    record = tmp_path / "compiled.sha256"
    monkeypatch.setattr(compiled, "RECORD", record)
    monkeypatch.delenv(compiled.PURE_PYTHON_VARIABLE, raising=False)
    assert compiled._state() == (False, "source (not compiled: run make)")
    built = all(compiled.extension_of(name) for name in compiled.MODULES)
    record.write_text(json.dumps({**digests, "ccserver.actors.engine": "0" * 64}))
    active, state = compiled._state()
    assert not active
    if built:
        assert "ccserver.actors.engine changed since it was compiled" in state
    record.write_text(json.dumps(digests))
    if built:
        assert compiled._state() == (True, "compiled (mypyc)")
    else:
        assert compiled._state()[1].endswith("is not compiled: run make)")


def test_where_a_c_compiler_is_there_make_built_the_engine() -> None:
    if os.environ.get(compiled.PURE_PYTHON_VARIABLE, "") not in ("", "0"):
        pytest.skip(f"{compiled.PURE_PYTHON_VARIABLE} is set")
    compiler = shutil.which("cc") or shutil.which("gcc")
    headers = Path(sysconfig.get_paths()["include"], "Python.h").exists()
    if not (os.environ.get("CI") and compiler and headers):
        pytest.skip("checked in CI, where make built the modules with the machine's C compiler")
    assert compiled.ACTIVE, compiled.STATE


def test_no_compiled_module_defines_a_msgspec_struct() -> None:
    """mypyc builds a struct class without its options: `gc=False` and `frozen` would be lost."""
    for name in compiled.MODULES:
        module = importlib.import_module(name)
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == name:
                assert not issubclass(value, msgspec.Struct), f"{name}.{value.__name__}"


def test_what_a_call_leaves_alive_is_not_for_the_collector_to_walk() -> None:
    """A busy server holds a minute of authorizations: their sessions, charges and priced rates
    stay out of the cycle collector, and rates stay frozen (hashable)."""
    world = World()
    key = granted(world.authorize()).session_key
    world.start("s1")
    session = world.engine.sessions[key]
    objects = [session, *session.levels]
    for charge in session.levels:
        objects += [charge.rate, charge.priced]
        hash(charge.rate)
        with pytest.raises(AttributeError):
            charge.rate.prefix = "1"  # type: ignore[misc]
    assert not [type(o).__name__ for o in objects if gc.is_tracked(o)]
