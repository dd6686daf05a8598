"""HTTP transport from the client to the control plane (httpx), with errors re-raised as neve errors."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import orjson

from neve.errors import NeveError, ServiceUnavailableError, error_from_dict


class Transport:
    def __init__(self, base_url: str, token: str, *, timeout: float = 600.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._client = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout, connect=10.0),
        )

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict | None = None,
        content: bytes | Iterable[bytes] | None = None,
        headers: dict | None = None,
        timeout: float | None = None,
        raw: bool = False,
        stream_to: Callable[[Iterator[bytes]], Any] | None = None,
    ) -> Any:
        """Send one request; return parsed JSON (or bytes when ``raw``); raise the server's error.

        ``content`` may be an iterable of chunks (``neve.registry.archive.FileChunks``): the
        body is then streamed, never held whole; set ``Content-Length`` in ``headers`` when it
        is known (else it goes chunked). With ``stream_to`` a successful response body is not
        read here: ``stream_to(chunks)`` consumes it as it arrives and its result is returned.
        """
        kwargs: dict[str, Any] = {"params": params, "headers": headers}
        if json is not None:
            kwargs["content"] = orjson.dumps(json, option=orjson.OPT_SERIALIZE_NUMPY)
            kwargs["headers"] = {"Content-Type": "application/json", **(headers or {})}
        elif content is not None:
            kwargs["content"] = content
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            if stream_to is None:
                resp = self._client.request(method, path, **kwargs)
            else:
                with self._client.stream(method, path, **kwargs) as resp:
                    if resp.status_code < 400:
                        return stream_to(resp.iter_bytes())
                    resp.read()  # an error: a small JSON body
        except httpx.TransportError as exc:
            raise ServiceUnavailableError(
                f"cannot reach the neve control plane at {self.base_url}: {exc}"
            ) from exc
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                raise NeveError(
                    f"{method} {path} failed with HTTP {resp.status_code}: {resp.text[:500]}"
                ) from None
            raise error_from_dict(body if isinstance(body, dict) else {"message": str(body)})
        if raw:
            return resp.content
        if not resp.content:
            return None
        return resp.json()

    def close(self) -> None:
        self._client.close()
