"""A module imported only when one of its attributes is first used, for imports a process may never need.

Not importlib.util.LazyLoader: on Python 3.11 the import system's own look at the lazy module
during nats-py's `import aiohttp` executes it (tests/test_cli_imports.py fails with it).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any


class Deferred(types.ModuleType):
    """Stands in `sys.modules` for a module not yet executed; the first attribute asked of it loads the
    real module, which from then on takes its place and answers for it."""

    def __getattr__(self, attr: str) -> Any:
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]  # so that the import below executes the real module
        try:
            real = importlib.import_module(name)
        except BaseException:
            sys.modules.setdefault(name, self)
            raise
        return getattr(real, attr)


def defer(name: str) -> bool:
    """Put a `Deferred` in place of the installed module `name`; False if it is loaded or not there."""
    if name in sys.modules or importlib.util.find_spec(name) is None:
        return False
    sys.modules[name] = Deferred(name)
    return True
