"""Network rules as package indexes: which hosts a build may reach, as uv index options.

A network rule lists ``host[:port]`` entries (port 443 when omitted; ``*.example.com`` matches
any subdomain). An external access integration bundles rules. A build that names integrations
may use exactly the package indexes whose hosts they allow:

- PyPI needs both ``pypi.org:443`` (the index) and ``files.pythonhosted.org:443`` (the files);
- any other allowed host is taken to serve a PEP 503 index at ``https://host[:port]/simple``
  (``download.pytorch.org`` at its CPU wheel index), unless the account setting
  ``index_urls`` maps the host to another URL.

Nothing here opens a connection: it only decides what the build is allowed to use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from neve.config import PYPI_INDEX
from neve.errors import InvalidArgumentError

PYPI_HOSTS = (("pypi.org", 443), ("files.pythonhosted.org", 443))
KNOWN_INDEXES = {"download.pytorch.org": "https://download.pytorch.org/whl/cpu"}
MODES = ("EGRESS",)
TYPES = ("HOST_PORT",)

_HOST = re.compile(
    r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)


@dataclass(frozen=True)
class HostPort:
    host: str  # lower-case; may start with "*." (any subdomain)
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    def allows(self, host: str, port: int) -> bool:
        if port != self.port:
            return False
        if self.host.startswith("*."):
            suffix = self.host[1:]  # ".example.com"
            return host.endswith(suffix) and len(host) > len(suffix)
        return host == self.host


def parse_host_port(entry: str, *, rule: str) -> HostPort:
    """``'pypi.org:443'`` -> HostPort; an error naming the rule and the entry otherwise."""
    if not isinstance(entry, str) or not entry.strip():
        raise InvalidArgumentError(f"network rule {rule}: empty VALUE_LIST entry {entry!r}")
    text = entry.strip().lower()
    if "://" in text or "/" in text:
        raise InvalidArgumentError(
            f"network rule {rule}: VALUE_LIST entry {entry!r} must be host or host:port "
            "(no scheme or path)"
        )
    host, sep, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    port = 443
    if sep:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise InvalidArgumentError(
                f"network rule {rule}: VALUE_LIST entry {entry!r} has an invalid port "
                f"{port_text!r} (1-65535)"
            )
        port = int(port_text)
    if not _HOST.match(host) or len(host) > 253:
        raise InvalidArgumentError(
            f"network rule {rule}: VALUE_LIST entry {entry!r} is not a valid host name"
        )
    return HostPort(host, port)


def normalize_rule(
    rule: str, mode: str | None, type_: str | None, value_list: list[str] | tuple[str, ...] | None
) -> tuple[str, str, list[str]]:
    """Validated (MODE, TYPE, VALUE_LIST) of a CREATE NETWORK RULE."""
    mode_key = str(mode or "EGRESS").strip().upper()
    if mode_key not in MODES:
        raise InvalidArgumentError(
            f"network rule {rule}: MODE {mode!r} is not supported; valid: {', '.join(MODES)}"
        )
    type_key = str(type_ or "HOST_PORT").strip().upper()
    if type_key not in TYPES:
        raise InvalidArgumentError(
            f"network rule {rule}: TYPE {type_!r} is not supported; valid: {', '.join(TYPES)}"
        )
    if isinstance(value_list, str):
        value_list = [value_list]
    entries = [str(parse_host_port(v, rule=rule)) for v in (value_list or [])]
    if not entries:
        raise InvalidArgumentError(
            f"network rule {rule}: VALUE_LIST is empty; list host:port entries such as "
            "('pypi.org:443', 'files.pythonhosted.org:443')"
        )
    return mode_key, type_key, list(dict.fromkeys(entries))


@dataclass
class IndexPolicy:
    """The package indexes a build may use, and why (for the build log and errors)."""

    integrations: list[str] = field(default_factory=list)
    allowed: list[HostPort] = field(default_factory=list)
    index_urls: list[str] = field(default_factory=list)  # first is the default index

    @property
    def pypi_allowed(self) -> bool:
        return all(self._allows(h, p) for h, p in PYPI_HOSTS)

    def _allows(self, host: str, port: int) -> bool:
        return any(a.allows(host, port) for a in self.allowed)

    def missing_pypi_hosts(self) -> list[str]:
        return [f"{h}:{p}" for h, p in PYPI_HOSTS if not self._allows(h, p)]

    def uv_args(self) -> list[str]:
        """``--index-url`` / ``--extra-index-url`` options (empty: no index may be used)."""
        if not self.index_urls:
            return []
        args = ["--index-url", self.index_urls[0]]
        for url in self.index_urls[1:]:
            args += ["--extra-index-url", url]
        return args

    def describe(self) -> str:
        if not self.integrations:
            return "no external access integration: only the local package cache and wheels"
        names = ", ".join(self.integrations)
        urls = ", ".join(self.index_urls) or "none"
        return f"integration(s) {names} allow {', '.join(map(str, self.allowed)) or 'no host'}; indexes: {urls}"


def index_policy(
    integrations: dict[str, list[str]], host_overrides: dict[str, str] | None = None
) -> IndexPolicy:
    """The policy for ``{integration name: [allowed 'host:port', ...]}``."""
    policy = IndexPolicy(integrations=sorted(integrations))
    seen: set[str] = set()
    for name in policy.integrations:
        for entry in integrations[name]:
            hp = parse_host_port(entry, rule=name)
            if str(hp) not in seen:
                seen.add(str(hp))
                policy.allowed.append(hp)
    overrides = {k.lower(): v for k, v in (host_overrides or {}).items()}
    if policy.pypi_allowed:
        policy.index_urls.append(PYPI_INDEX)
    pypi_names = {h for h, _ in PYPI_HOSTS}
    for hp in policy.allowed:
        if hp.host in pypi_names or hp.host.startswith("*."):
            continue  # PyPI is handled above; a wildcard names no index
        url = overrides.get(hp.host) or KNOWN_INDEXES.get(hp.host)
        if url is None:
            url = f"https://{hp.host}/simple" if hp.port == 443 else f"https://{hp}/simple"
        if url not in policy.index_urls:
            policy.index_urls.append(url)
    return policy
