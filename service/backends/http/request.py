"""What one HTTP request to ClickHouse carries: the SQL body, its parameters, settings as text.

``{name:Type}`` placeholders are bound by the server where it supports query parameters (they
travel as ``param_*`` URL arguments), otherwise on the client
(``service.backends.dialect.bind_client_side``). URL arguments that would grow past what a
server accepts go into the body as literals instead (``bind_for_http``).
"""

from __future__ import annotations

import io
import urllib.parse
from collections.abc import Mapping

from service.backends.dialect import Dialect, bind_client_side, unescape_text

#: Percent-encoded characters of query parameters beyond which they are sent as literals in the
#: body rather than in the URL (see ``bind_for_http``).
MAX_URL_PARAMETER_CHARS = 256 * 1024
DEFAULT_MAX_QUERY_SIZE = 256 * 1024
"""ClickHouse's default ``max_query_size``: the parser's cap on a query's text."""
_LARGE_BODY_BYTES = 1 << 20


def request_body(data: bytes) -> bytes | io.BytesIO:
    """A request body as aiohttp sends it without holding the event loop.

    aiohttp writes a ``bytes`` body in one go and warns beyond 1 MiB (a long literal-bound query
    or a large insert gets there); a file-like body goes out in chunks. New for every attempt:
    a retry must not find the stream already read.
    """
    return io.BytesIO(data) if len(data) > _LARGE_BODY_BYTES else data


def bind_for_http(
    dialect: Dialect, sql: str, parameters: Mapping[str, str]
) -> tuple[str, dict[str, str]]:
    """The SQL body and URL arguments of one request carrying ``parameters``.

    Servers cap the request URL (``http_max_uri_size``, 1 MiB by default) and query parameters
    travel in it: values this long go into the body as literals instead. A body beyond the
    parser's own cap (``max_query_size``, 256 KiB by default; every body of a server without
    query parameters has literals) gets the cap raised to its length.
    """
    bound, arguments = dialect.bind(sql, parameters)
    if _url_length(arguments) > MAX_URL_PARAMETER_CHARS:
        bound, arguments = bind_client_side(sql, parameters), {}
    size = len(bound.encode("utf-8"))
    if size > DEFAULT_MAX_QUERY_SIZE - 1024:
        arguments["max_query_size"] = str(size + 65_536)
    return bound, arguments


def _url_length(arguments: Mapping[str, str]) -> int:
    """How many characters ``arguments`` take in a URL query string."""
    return sum(
        len(urllib.parse.quote(name)) + len(urllib.parse.quote(value)) + 2
        for name, value in arguments.items()
    )


def setting_text(value: str) -> str:
    """A compiled setting's value as an HTTP argument.

    Compiled settings are SQL literals (the embedded backend writes them into a ``SETTINGS``
    clause); a quoted string literal travels as the text it stands for.
    """
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return unescape_text(value[1:-1]).decode("utf-8", "surrogateescape")
    return value
