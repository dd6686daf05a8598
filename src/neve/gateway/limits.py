"""Ingress limits and the uvicorn options that enforce the transport-level ones.

Every value can be set in the account's ``settings.toml`` (top level, next to the built-in
settings; they land in ``Settings.extra``):

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
    max_header_bytes: int = 16 * 1024
    max_header_count: int = 100
    max_body_bytes: int = 32 * 1024 * 1024
    body_timeout_secs: float = 30.0
    request_timeout_secs: float = 300.0
    wake_timeout_secs: float = 120.0
    connect_timeout_secs: float = 5.0
    retry_after_secs: int = 5
    queue_timeout_secs: float = 10.0
    max_inflight: int = 1000
    auth_cache_secs: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings) -> GatewayLimits:
        x = settings.extra
        return cls(
            max_header_bytes=int(x.get("http_max_header_bytes", cls.max_header_bytes)),
            max_body_bytes=int(x.get("ingress_max_body_bytes", cls.max_body_bytes)),
            body_timeout_secs=float(x.get("ingress_body_timeout_secs", cls.body_timeout_secs)),
            request_timeout_secs=float(
                x.get("ingress_request_timeout_secs", cls.request_timeout_secs)
            ),
            wake_timeout_secs=float(x.get("ingress_wake_timeout_secs", cls.wake_timeout_secs)),
            auth_cache_secs=float(x.get("ingress_auth_cache_secs", cls.auth_cache_secs)),
            queue_timeout_secs=float(x.get("ingress_queue_timeout_secs", cls.queue_timeout_secs)),
            max_inflight=int(x.get("ingress_max_inflight", cls.max_inflight)),
        )


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` of any server that carries the ingress.

    TLS is on when ``tls_certfile`` is set (``tls_keyfile`` is then required unless the
    certificate file also holds the key).
    """
    from neve.gateway.protocol import guarded_protocol

    x = settings.extra
    options: dict[str, Any] = {
        "http": guarded_protocol(float(x.get("http_header_timeout_secs", 10))),
        "timeout_keep_alive": int(x.get("http_keep_alive_secs", 5)),
        "h11_max_incomplete_event_size": int(x.get("http_max_header_bytes", 16 * 1024)),
        "limit_concurrency": int(x.get("http_limit_concurrency", 1000)),
        "server_header": False,
    }
    certfile = x.get("tls_certfile")
    if certfile:
        cert = Path(str(certfile)).expanduser()
        if not cert.is_file():
            raise InvalidArgumentError(f"tls_certfile {cert} does not exist")
        options["ssl_certfile"] = str(cert)
        keyfile = x.get("tls_keyfile")
        if keyfile:
            key = Path(str(keyfile)).expanduser()
            if not key.is_file():
                raise InvalidArgumentError(f"tls_keyfile {key} does not exist")
            options["ssl_keyfile"] = str(key)
        if x.get("tls_keyfile_password"):
            options["ssl_keyfile_password"] = str(x["tls_keyfile_password"])
    elif x.get("tls_keyfile"):
        raise InvalidArgumentError("tls_keyfile is set but tls_certfile is not")
    return options
