"""The neve exception hierarchy.

Every error a user can cause is a ``NeveError`` whose message names the object and what is
wrong. ``code`` is a stable machine-readable string and ``http_status`` the status the REST API
and the ingress answer with, so one mechanism maps errors to responses everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable


class NeveError(Exception):
    """Base class of every error neve raises on purpose."""

    code = "NEVE_ERROR"
    http_status = 400

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "type": type(self).__name__}


class InvalidArgumentError(NeveError, ValueError):
    code = "INVALID_ARGUMENT"


class InvalidIdentifierError(InvalidArgumentError):
    code = "INVALID_IDENTIFIER"


class SignatureError(InvalidArgumentError):
    """Input data that does not match a model method's signature."""

    code = "SIGNATURE_MISMATCH"


class ObjectNotFoundError(NeveError, LookupError, ValueError):
    """A missing object. Also a ``ValueError``: the reference registry API raises that for a
    missing model or version, and code written for it catches it."""

    code = "NOT_FOUND"
    http_status = 404


class ObjectExistsError(NeveError):
    code = "ALREADY_EXISTS"
    http_status = 409


class ObjectInUseError(NeveError):
    code = "IN_USE"
    http_status = 409


class InvalidStateError(NeveError):
    code = "INVALID_STATE"
    http_status = 409


class NotSupportedError(NeveError):
    code = "NOT_SUPPORTED"
    http_status = 400


class ModelSerializationError(NeveError):
    code = "MODEL_SERIALIZATION"


class ModelExecutionError(NeveError):
    """An exception raised inside a model method."""

    code = "MODEL_ERROR"
    http_status = 500


class AuthenticationError(NeveError):
    code = "UNAUTHENTICATED"
    http_status = 401


class PermissionDeniedError(NeveError, PermissionError):
    code = "PERMISSION_DENIED"
    http_status = 403


class SqlSyntaxError(NeveError):
    code = "SQL_SYNTAX"

    def __init__(self, message: str, *, line: int | None = None, col: int | None = None) -> None:
        where = f" at line {line}, position {col}" if line is not None else ""
        super().__init__(f"SQL compilation error{where}: {message}")
        self.line = line
        self.col = col


class BuildError(NeveError):
    code = "BUILD_FAILED"
    http_status = 422


class ResourceError(NeveError):
    """A request that does not fit the compute pool it names."""

    code = "INSUFFICIENT_RESOURCES"
    http_status = 422


class ServiceUnavailableError(NeveError):
    code = "SERVICE_UNAVAILABLE"
    http_status = 503


class OverloadedError(NeveError):
    code = "OVERLOADED"
    http_status = 429


class PayloadTooLargeError(NeveError):
    """A request body or row count larger than a server admits at once."""

    code = "PAYLOAD_TOO_LARGE"
    http_status = 413


class UnsupportedMediaTypeError(InvalidArgumentError):
    """A request body in a format the endpoint does not read (its Content-Type)."""

    code = "UNSUPPORTED_MEDIA_TYPE"
    http_status = 415


ERRORS_BY_NAME: dict[str, type[NeveError]] = {
    cls.__name__: cls
    for cls in [
        NeveError,
        InvalidArgumentError,
        InvalidIdentifierError,
        SignatureError,
        ObjectNotFoundError,
        ObjectExistsError,
        ObjectInUseError,
        InvalidStateError,
        NotSupportedError,
        ModelSerializationError,
        ModelExecutionError,
        AuthenticationError,
        PermissionDeniedError,
        SqlSyntaxError,
        BuildError,
        ResourceError,
        ServiceUnavailableError,
        OverloadedError,
        PayloadTooLargeError,
        UnsupportedMediaTypeError,
    ]
}


def error_from_dict(body: dict) -> NeveError:
    """Rebuild the error a server sent (the client raises the same class the server raised)."""
    cls = ERRORS_BY_NAME.get(str(body.get("type")), NeveError)
    err = cls.__new__(cls)
    NeveError.__init__(err, str(body.get("message", "unknown error")), code=body.get("code"))
    return err


def check_fields(fields: Iterable[str], allowed: Iterable[str], *, what: str) -> None:
    """Refuse field names ``what`` does not take, naming them and the allowed ones."""
    allowed = set(allowed)
    unknown = set(fields) - allowed
    if unknown:
        raise InvalidArgumentError(
            f"{what}: unknown field(s) {', '.join(sorted(unknown))}; allowed: "
            f"{', '.join(sorted(allowed))}"
        )
