"""Running suites: the driver, executors, one run's lifecycle, re-evaluation.

The package is also the Python API's ``bench.run(suite, tracking_uri=None, overrides=())``: calling
it calls ``bench.run.api.run`` (``import bench`` binds ``bench.run`` to this package once any of
its modules is imported, so the package itself answers the call).
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from bench.run.api import run

        return run(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
