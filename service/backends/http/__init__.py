"""The ClickHouse server backend over HTTP, one module per job (see ``client``'s docstring).

``HttpBackend`` is the package's one entry point, so callers write
``from service.backends.http import HttpBackend``; everything else is imported from its module.
"""

from service.backends.http.client import HttpBackend

__all__ = ["HttpBackend"]
