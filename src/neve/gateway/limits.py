"""Ingress limits and the uvicorn options that enforce the transport-level ones.

Every value is a setting (``neve.config``: ``settings.toml`` flat key or section table, or
``NEVE_<KEY>``):

=============================== ========= =====================================================
setting                         default   meaning
=============================== ========= =====================================================
``tls_certfile``                (none)    PEM certificate: serve HTTPS (uvicorn ``ssl_certfile``)
``tls_keyfile``                 (none)    PEM private key for it (uvicorn ``ssl_keyfile``)
``tls_keyfile_password``        (none)    password of an encrypted key
``http_header_timeout_secs``    10        request line + headers must arrive within this
``http_keep_alive_secs``        5         idle keep-alive connections are closed after this
``http_max_header_bytes``       16384     larger request headers: 431
``http_limit_concurrency``      1000      more open connections/requests: 503
``ingress_max_body_bytes``      33554432  larger request bodies: 413
``ingress_body_timeout_secs``   30        the whole body must arrive within this: 408
``ingress_request_timeout_secs`` 300      an instance must answer within this: 504
``ingress_wake_timeout_secs``   120       hold a request this long for a suspended service: 503
``ingress_queue_timeout_secs``  10        a request's whole wait (proxy + instance queue): 503
``ingress_max_inflight``        1000      more requests at once in one proxy: 503 + Retry-After
``ingress_auth_cache_secs``     1         reuse a token's / a service's look-up this long (0: off);
                                          changes made in this process apply at once
=============================== ========= =====================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neve.config import Settings
from neve.errors import InvalidArgumentError


@dataclass(frozen=True)
class GatewayLimits:
    """What the gateway enforces: the ``[ingress]`` settings plus three fixed limits."""

    max_header_bytes: int
    max_body_bytes: int
    body_timeout_secs: float
    request_timeout_secs: float
    wake_timeout_secs: float
    queue_timeout_secs: float
    max_inflight: int
    auth_cache_secs: float
    max_header_count: int = 100
    connect_timeout_secs: float = 5.0
    retry_after_secs: int = 5

    @classmethod
    def from_settings(cls, settings: Settings) -> GatewayLimits:
        ingress = settings.ingress
        return cls(
            max_header_bytes=settings.http.max_header_bytes,
            max_body_bytes=ingress.max_body_bytes,
            body_timeout_secs=ingress.body_timeout_secs,
            request_timeout_secs=ingress.request_timeout_secs,
            wake_timeout_secs=ingress.wake_timeout_secs,
            queue_timeout_secs=ingress.queue_timeout_secs,
            max_inflight=ingress.max_inflight,
            auth_cache_secs=ingress.auth_cache_secs,
        )


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` of any server that carries the ingress.

    TLS is on when ``tls_certfile`` is set (``tls_keyfile`` is then required unless the
    certificate file also holds the key).
    """
    from neve.gateway.protocol import guarded_protocol

    http, tls = settings.http, settings.tls
    options: dict[str, Any] = {
        "http": guarded_protocol(http.header_timeout_secs, http.max_header_bytes),
        "timeout_keep_alive": http.keep_alive_secs,
        "limit_concurrency": http.limit_concurrency,
        "server_header": False,
    }
    if tls.certfile:
        cert = Path(tls.certfile).expanduser()
        if not cert.is_file():
            raise InvalidArgumentError(f"tls_certfile {cert} does not exist")
        options["ssl_certfile"] = str(cert)
        if tls.keyfile:
            key = Path(tls.keyfile).expanduser()
            if not key.is_file():
                raise InvalidArgumentError(f"tls_keyfile {key} does not exist")
            options["ssl_keyfile"] = str(key)
        if tls.keyfile_password:
            options["ssl_keyfile_password"] = tls.keyfile_password
    elif tls.keyfile:
        raise InvalidArgumentError("tls_keyfile is set but tls_certfile is not")
    return options
