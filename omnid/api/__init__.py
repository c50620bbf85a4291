"""The RPC methods: ``dispatch`` runs one request with a ``Context`` of the daemon's
services; each submodule holds the handlers of one entity."""

from . import (  # noqa: F401  (they register their handlers)
    checkpoints,
    context,
    daemon,
    maintenance,
    memories,
    messages,
    pack,
    projects,
    sessions,
    similar,
    tasks,
)
from ._context import Caller, Context
from ._dispatch import dispatch, error_info, params_error

__all__ = ["Caller", "Context", "dispatch", "error_info", "params_error"]
