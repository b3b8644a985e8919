"""The scripts under ``tools/`` (not part of the package), importable by the tests that
check them, e.g. ``load_tool("pictures")`` for tools/pictures.py."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from marketstream.settings import PROJECT_ROOT

TOOLS = PROJECT_ROOT / "tools"


def load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` as a module, loaded once. It is registered in ``sys.modules``
    before it runs, which its dataclasses need to resolve their annotations."""
    key = f"tools_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None, f"no tools/{name}.py"
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise
    return module
