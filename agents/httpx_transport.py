"""An httpx transport that sends every request through the supervisor.

``httpx.Client(transport=HttpxTransport(client, capability))`` makes code
written for httpx run unchanged inside a confined agent, which has no
network of its own: each request becomes one brokered ``http`` call under
``capability``, checked by the supervisor and made by it, credentials
included. httpx still does what it does on top of a transport (redirects
if asked to, cookies, decoding the body), each step of it a request the
supervisor checks again.

Failures of the far end become httpx's own exceptions (a timeout is
``httpx.TimeoutException``, no connection ``httpx.ConnectError``), so
retry logic written for httpx keeps working; a refusal of the capability
stays a capsup error (``capsup.agents.AccessDenied`` and the rest): no
retry changes it.
"""

from __future__ import annotations

from typing import Final

import httpx
from capsup.agents.client import CapabilityRef, Client
from capsup.agents.errors import UpstreamError

__all__ = ["HttpxTransport"]

#: Headers the supervisor sets itself (and refuses from an agent), which
#: httpx adds to every request; and ``Accept-Encoding``, which the
#: supervisor refuses on a capability that carries credentials (it asks for
#: ``identity`` itself).
_SUPERVISOR_HEADERS: Final = frozenset(
    {
        "host",
        "connection",
        "content-length",
        "transfer-encoding",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "accept-encoding",
    }
)

#: The httpx exception each ``upstream_error`` reason becomes.
_UPSTREAM: Final[dict[str, type[httpx.TransportError]]] = {
    "timeout": httpx.ReadTimeout,
    "dns_failed": httpx.ConnectError,
    "connect_failed": httpx.ConnectError,
    "tls_error": httpx.ConnectError,
    "connection_lost": httpx.ReadError,
    "protocol_error": httpx.RemoteProtocolError,
}


class HttpxTransport(httpx.BaseTransport):
    """Sends httpx requests as brokered ``http`` calls of ``client``."""

    def __init__(self, client: Client, capability: CapabilityRef) -> None:
        self._client = client
        self._capability = capability

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        headers: dict[str, str] = {}
        for name, value in request.headers.multi_items():
            lower = name.lower()
            if lower in _SUPERVISOR_HEADERS or lower.startswith("proxy-"):
                continue
            # One field per name on the wire: repeated ones are joined, as
            # RFC 9110 allows for list-valued headers.
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        timeout = request.extensions.get("timeout", {}).get("read")
        try:
            response = self._client.http(
                self._capability,
                request.method,
                str(request.url),
                headers=headers,
                body=request.read(),
                timeout=timeout,
            )
        except UpstreamError as error:
            raise _UPSTREAM.get(error.reason or "", httpx.TransportError)(
                error.message, request=request
            ) from error
        return httpx.Response(
            response.status,
            headers=list(response.headers),
            content=response.body,
            request=request,
        )
