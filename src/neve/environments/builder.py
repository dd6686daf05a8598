"""Build environments with uv: the shared base, and model images layered over it.

Base (``<bases>/base-<hash>``): a venv with the inference server's dependencies and the common
frameworks (see ``inputs.base_packages``) plus neve's runtime (server + models), built once per
server version / python / package set.

Model image (``<images>/<digest>``): a venv whose site-packages holds a ``.pth`` line that adds
the base's site-packages *after* its own, plus only the distributions the base lacks or has at
another version. Those are found by resolving the model's requirements with the base's versions
as constraints (``uv pip compile``) and subtracting what the base already has; they are
installed with ``--no-deps``. A model whose pinned dependencies the base satisfies (the usual
case for a model logged next to the control plane) gets an image of a few kilobytes.

Every build happens in a temporary directory beside the destination and is renamed into place
only when complete (``rename`` is atomic), so a killed build never leaves a usable-looking image.
uv runs with its cache (``UV_CACHE_DIR`` or its default), the local wheel directories
(``PIP_FIND_LINKS``, ``/opt/wheels``) as ``--find-links``, and ``--offline`` first: building
from the local package cache needs no network. Only when that fails does it use the package
indexes the build's external access integrations allow, and with none allowed it fails naming
the host it would need.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from neve.environments.buildlog import BuildLog
from neve.environments.inputs import BaseSpec, ImageInputs, runtime_files
from neve.environments.locks import FileLock
from neve.environments.network import IndexPolicy
from neve.environments.runner import Deadline, run_command
from neve.errors import BuildError

BASE_MARKER = "neve-base.json"
IMAGE_MARKER = "neve-image.json"
BASE_PTH = "_neve_base.pth"
TMP_DIR = ".tmp"
TRASH_DIR = ".trash"
LOCKS_DIR = ".locks"

# What uv prints when a package could only come from the network.
_CACHE_MISS = re.compile(
    r"not found in the cache|network was disabled|needs to be downloaded from a registry|"
    r"network connectivity is disabled|offline",
    re.IGNORECASE,
)
_MISSING_NAME = re.compile(
    r"(?<![\w.-])([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?(?:[<>=!~][^ ]*)? "
    r"(?:was not found in the cache|needs to be downloaded from a registry)"
)


def site_packages(env: Path, python_version: str) -> Path:
    major_minor = ".".join(python_version.split(".")[:2])
    return env / "lib" / f"python{major_minor}" / "site-packages"


def tree_size(path: Path) -> int:
    """Bytes of the regular files under ``path``, each inode counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if not os.path.isfile(os.path.join(root, name)) or os.path.islink(
                os.path.join(root, name)
            ):
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += st.st_size
    return total


def installed_versions(site: Path) -> dict[str, str]:
    """Canonical distribution name -> version of what is installed in ``site``."""
    out: dict[str, str] = {}
    for dist in metadata.distributions(path=[str(site)]):
        name = dist.metadata["Name"]
        if name:
            out.setdefault(canonicalize_name(name), dist.version)
    return out


def missing_from(requirements: list[str], have: dict[str, str]) -> list[str]:
    """The requirements ``have`` does not satisfy (markers evaluated for this interpreter).

    A requirement with extras counts as missing: whether the extras' dependencies are there is
    for the resolver to decide.
    """
    missing = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        version = have.get(canonicalize_name(req.name))
        if (
            version is None
            or req.extras
            or req.url
            or not req.specifier.contains(version, prereleases=True)
        ):
            missing.append(text)
    return missing


def cache_misses(uv_output: str) -> list[str]:
    """Package names uv could not get without the network (from its error text)."""
    return sorted(set(_MISSING_NAME.findall(uv_output)))


@dataclass
class BuildResult:
    path: Path
    size_bytes: int
    installed: list[str] = field(default_factory=list)
    used_network: bool = False


class ImageBuilder:
    def __init__(
        self,
        *,
        uv: str,
        images_dir: Path,
        bases_dir: Path,
        find_links: list[str],
        base_index_url: str | None,
    ) -> None:
        self.uv = uv
        self.images_dir = Path(images_dir)
        self.bases_dir = Path(bases_dir)
        self.find_links = list(find_links)
        self.base_index_url = base_index_url

    # -- shared helpers ---------------------------------------------------------------------------
    def _uv_env(self) -> dict[str, str]:
        # No interpreter downloads, no colour codes or spinners in the log. Bytecode is not
        # compiled here (a base with torch and transformers would take ~35 s more): an image's
        # first instance writes the caches of the modules it imports (see instance_environment).
        return {"UV_PYTHON_DOWNLOADS": "never", "NO_COLOR": "1", "UV_NO_PROGRESS": "1"}

    def _find_links_args(self) -> list[str]:
        args: list[str] = []
        for link in self.find_links:
            args += ["--find-links", link]
        return args

    def _uv(self, args: list[str], log: BuildLog, deadline: Deadline, what: str) -> tuple[int, str]:
        result = run_command(
            [self.uv, *args], log=log, deadline=deadline, what=what, env=self._uv_env()
        )
        return result.returncode, result.output

    def _tmp_dir(self, root: Path, label: str) -> Path:
        tmp_root = root / TMP_DIR
        tmp_root.mkdir(parents=True, exist_ok=True)
        # The builder's pid in the name tells a restarted control plane whether it still runs.
        return tmp_root / f"{label}.pid{os.getpid()}.{secrets.token_hex(4)}"

    def _create_venv(self, dest: Path, python: str, log: BuildLog, deadline: Deadline) -> None:
        code, out = self._uv(
            ["venv", "--relocatable", "--no-project", "--quiet", "--python", python, str(dest)],
            log,
            deadline,
            "creating the virtual environment",
        )
        if code != 0:
            raise BuildError(
                f"uv could not create a virtual environment with {python}: {out[-2000:]}"
            )

    @staticmethod
    def _promote(tmp: Path, dest: Path) -> None:
        """Move a finished build into place (atomic); an existing one goes to the trash."""
        if dest.exists():
            trash = dest.parent / TRASH_DIR
            trash.mkdir(parents=True, exist_ok=True)
            old = trash / f"{dest.name}-{int(time.time())}-{secrets.token_hex(3)}"
            os.rename(dest, old)
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dest)

    # -- base -------------------------------------------------------------------------------------
    def base_path(self, spec: BaseSpec) -> Path:
        return self.bases_dir / spec.dir_name

    def ensure_base(self, spec: BaseSpec, log: BuildLog, deadline: Deadline) -> Path:
        """The base environment for ``spec``, built now if this machine has none yet."""
        dest = self.base_path(spec)
        if (dest / BASE_MARKER).exists():
            log.write(f"base environment {dest.name} exists: reused")
            return dest
        lock = FileLock(self.bases_dir / LOCKS_DIR / f"{dest.name}.lock")
        lock.acquire(deadline, what=f"base environment {dest.name} (built by another job)")
        try:
            if (dest / BASE_MARKER).exists():
                log.write(f"base environment {dest.name} was built by another job: reused")
                return dest
            with log.step(f"build base environment {dest.name} ({len(spec.packages)} packages)"):
                self._build_base(spec, dest, log, deadline)
            return dest
        finally:
            lock.release()

    def _build_base(self, spec: BaseSpec, dest: Path, log: BuildLog, deadline: Deadline) -> None:
        tmp = self._tmp_dir(self.bases_dir, dest.name)
        started = time.monotonic()
        try:
            with log.step("create base venv"):
                self._create_venv(tmp, spec.python, log, deadline)
            py = str(tmp / "bin" / "python")
            log.write("base packages: " + " ".join(spec.packages))
            with log.step("install base packages (local cache and wheels, offline)"):
                code, out = self._uv(
                    [
                        "pip",
                        "install",
                        "--python",
                        py,
                        "--offline",
                        *self._find_links_args(),
                        *spec.packages,
                    ],
                    log,
                    deadline,
                    "installing the base packages",
                )
            if code != 0:
                if not self.base_index_url:
                    raise BuildError(
                        "the base environment cannot be built from the local package cache "
                        f"and no base index is configured: {_tail(out)}"
                    )
                # The base is the platform's own image (like the reference's base images): it
                # may come from the configured index; model layers follow the integrations.
                with log.step(f"install base packages from {self.base_index_url}"):
                    code, out = self._uv(
                        [
                            "pip",
                            "install",
                            "--python",
                            py,
                            "--index-url",
                            self.base_index_url,
                            *self._find_links_args(),
                            *spec.packages,
                        ],
                        log,
                        deadline,
                        "installing the base packages",
                    )
                if code != 0:
                    raise BuildError(f"the base environment could not be installed: {_tail(out)}")
            with log.step("install the neve inference server runtime"):
                install_runtime(site_packages(tmp, spec.python_version), spec.server_version)
            with log.step("check the base imports the inference server"):
                result = run_command(
                    [py, "-c", "import neve.server.app, neve.models; print('ok')"],
                    log=log,
                    deadline=deadline,
                    what="checking the base environment",
                )
                if result.returncode != 0:
                    raise BuildError(
                        f"the base environment cannot import the inference server: "
                        f"{_tail(result.output)}"
                    )
            size = tree_size(tmp)
            marker = {
                **spec.to_dict(),
                "size_bytes": size,
                "build_seconds": round(time.monotonic() - started, 3),
                "created_on": datetime.now(UTC).isoformat(),
                "installed": sorted(
                    f"{k}=={v}"
                    for k, v in installed_versions(site_packages(tmp, spec.python_version)).items()
                ),
            }
            (tmp / BASE_MARKER).write_text(json.dumps(marker, indent=1))
            deadline.check("finishing the base environment")
            self._promote(tmp, dest)
            log.write(f"base environment ready: {dest} ({size / 2**20:.1f} MiB)")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # -- model image ------------------------------------------------------------------------------
    def image_path(self, digest: str) -> Path:
        return self.images_dir / digest

    def build_image(
        self,
        inputs: ImageInputs,
        base: Path,
        base_spec: BaseSpec,
        log: BuildLog,
        deadline: Deadline,
        policy: IndexPolicy,
        *,
        what: str,
    ) -> BuildResult:
        """Build the model layer for ``inputs`` over ``base`` into ``<images>/<digest>``."""
        digest = inputs.digest
        dest = self.image_path(digest)
        tmp = self._tmp_dir(self.images_dir, digest[:16])
        try:
            with log.step("create image venv"):
                self._create_venv(tmp, str(base / "bin" / "python"), log, deadline)
            py = str(tmp / "bin" / "python")
            site = site_packages(tmp, base_spec.python_version)
            base_site = site_packages(base, base_spec.python_version)
            # "import" lines in .pth files run: addsitedir also processes the base's own .pth
            # files, and appends after this venv's site-packages (the model layer wins).
            (site / BASE_PTH).write_text(
                f"import site; site.addsitedir({str(base_site)!r})\n", encoding="utf-8"
            )
            have = installed_versions(base_site)
            needed = missing_from(list(inputs.requirements), have)
            installed: list[str] = []
            used_network = False
            if not needed:
                log.write(
                    f"all {len(inputs.requirements)} requirement(s) are satisfied by the base "
                    "environment: the image adds no packages"
                )
            else:
                log.write("not in the base environment: " + ", ".join(needed))
                pins, used_network = self._resolve(
                    list(inputs.requirements), base_site, have, py, tmp, log, deadline, policy, what
                )
                layer = [p for p in pins if not _same_pin(p, have)]
                if layer:
                    installed = self._install(
                        layer, py, tmp, log, deadline, policy, used_network, what
                    )
                else:
                    log.write("the resolution needs nothing beyond the base environment")
            with log.step("check the image's requirements and the inference server import"):
                self._verify(py, list(inputs.requirements), log, deadline)
            size = tree_size(tmp)
            marker = {
                "digest": digest,
                "inputs": inputs.to_dict(),
                "base": str(base),
                "installed": installed,
                "size_bytes": size,
                "created_on": datetime.now(UTC).isoformat(),
            }
            (tmp / IMAGE_MARKER).write_text(json.dumps(marker, indent=1))
            deadline.check("finishing the image")
            self._promote(tmp, dest)
            return BuildResult(dest, size, installed, used_network)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _resolve(
        self,
        requirements: list[str],
        base_site: Path,
        have: dict[str, str],
        py: str,
        tmp: Path,
        log: BuildLog,
        deadline: Deadline,
        policy: IndexPolicy,
        what: str,
    ) -> tuple[list[str], bool]:
        """Pinned distributions for ``requirements`` (base versions preferred); used network?"""
        work = tmp.parent / f"{tmp.name}-resolve"
        work.mkdir(parents=True, exist_ok=True)
        try:
            reqs_in = work / "requirements.in"
            reqs_in.write_text("\n".join(requirements) + "\n")
            constraints = work / "base-constraints.txt"
            constraints.write_text("\n".join(f"{k}=={v}" for k, v in sorted(have.items())) + "\n")
            out_file = work / "resolved.txt"

            def compile_(network: list[str] | None, constrained: bool) -> tuple[int, str]:
                args = [
                    "pip",
                    "compile",
                    "--python",
                    py,
                    "--no-header",
                    "--no-annotate",
                    "--quiet",
                    *self._find_links_args(),
                    "-o",
                    str(out_file),
                ]
                args += ["--offline"] if network is None else network
                if constrained:
                    args += ["-c", str(constraints)]
                args.append(str(reqs_in))
                where = "offline" if network is None else "from the allowed indexes"
                label = "with the base's versions" if constrained else "without the base's pins"
                with log.step(f"resolve requirements {where} ({label})"):
                    return self._uv(args, log, deadline, "resolving the requirements")

            code, out = compile_(None, True)
            if code != 0 and not _CACHE_MISS.search(out):
                code, out = compile_(None, False)  # conflicts with the base: layer shadows it
            used_network = False
            if code != 0:
                if not _CACHE_MISS.search(out):
                    raise BuildError(f"{what}: the dependencies cannot be resolved: {_tail(out)}")
                missing = cache_misses(out) or ["(see the build log)"]
                self._require_network(policy, missing, what)
                used_network = True
                log.write(
                    f"not in the local package cache: {', '.join(missing)}; " + policy.describe()
                )
                code, out = compile_(policy.uv_args(), True)
                if code != 0:
                    code, out = compile_(policy.uv_args(), False)
                if code != 0:
                    raise BuildError(
                        f"{what}: the dependencies cannot be resolved from "
                        f"{', '.join(policy.index_urls)}: {_tail(out)}"
                    )
            return _read_pins(out_file), used_network
        finally:
            shutil.rmtree(work, ignore_errors=True)

    @staticmethod
    def _require_network(policy: IndexPolicy, missing: list[str], what: str) -> None:
        if policy.index_urls:
            return
        hosts = ", ".join(policy.missing_pypi_hosts())
        names = ", ".join(missing)
        if policy.integrations:
            raise BuildError(
                f"{what}: {names} not in the local package cache, and the external access "
                f"integration(s) {', '.join(policy.integrations)} do not allow {hosts} (needed "
                "to install from PyPI); add a network rule with these hosts to the integration"
            )
        raise BuildError(
            f"{what}: {names} not in the local package cache, and no external access "
            f"integration allows a package index; installing from PyPI needs {hosts}: pass "
            "build_external_access_integrations=[...] naming an integration that allows them"
        )

    def _install(
        self,
        pins: list[str],
        py: str,
        tmp: Path,
        log: BuildLog,
        deadline: Deadline,
        policy: IndexPolicy,
        network_first: bool,
        what: str,
    ) -> list[str]:
        reqs = tmp.parent / f"{tmp.name}-layer.txt"
        reqs.write_text("\n".join(pins) + "\n")
        try:
            base_args = [
                "pip",
                "install",
                "--python",
                py,
                "--no-deps",
                *self._find_links_args(),
                "-r",
                str(reqs),
            ]
            code, out = 1, ""
            if not network_first:
                with log.step(f"install {len(pins)} package(s) into the image (offline)"):
                    code, out = self._uv([*base_args, "--offline"], log, deadline, "installing")
                if code != 0 and _CACHE_MISS.search(out):
                    self._require_network(policy, cache_misses(out) or pins, what)
            if code != 0:
                with log.step(f"install {len(pins)} package(s) from the allowed indexes"):
                    code, out = self._uv(
                        [*base_args, *policy.uv_args()], log, deadline, "installing"
                    )
            if code != 0:
                raise BuildError(f"{what}: installing {', '.join(pins)} failed: {_tail(out)}")
            return pins
        finally:
            reqs.unlink(missing_ok=True)

    @staticmethod
    def _verify(py: str, requirements: list[str], log: BuildLog, deadline: Deadline) -> None:
        """Ask the image's python what it sees (both layers) and check every requirement."""
        script = (
            "import json\n"
            "from importlib import metadata\n"
            "import neve.server.config\n"
            "seen = {}\n"
            "for d in metadata.distributions():\n"
            "    seen.setdefault(d.metadata['Name'], d.version)\n"
            "print('NEVE-DISTS ' + json.dumps(seen))\n"
        )
        result = run_command(
            [py, "-c", script],
            log=log,
            deadline=deadline,
            what="checking the image",
            log_output=False,
        )
        line = next((x for x in result.output.splitlines() if x.startswith("NEVE-DISTS ")), None)
        if result.returncode != 0 or line is None:
            raise BuildError(
                f"the built image cannot import the inference server: {_tail(result.output)}"
            )
        have: dict[str, str] = {
            canonicalize_name(k): v for k, v in json.loads(line[len("NEVE-DISTS ") :]).items()
        }
        bad = [
            f"{text} (found {have.get(canonicalize_name(Requirement(text).name), 'nothing')})"
            for text in missing_from(requirements, have)
            if not Requirement(text).extras
        ]
        if bad:
            raise BuildError(f"the built image does not satisfy its requirements: {', '.join(bad)}")
        log.write(f"{len(have)} distributions visible; every requirement satisfied")


def install_runtime(site: Path, server_version: str) -> None:
    """Install neve's runtime (server + models + errors) into ``site``, without dependencies.

    Exactly the files whose hash is the server version are copied, with a ``dist-info`` so
    ``importlib.metadata`` knows the distribution (what ``uv pip install --no-deps`` of neve
    would give, without building a wheel of the whole control plane).
    """
    import neve

    pkg = site / "neve"
    records = []
    for rel, file in runtime_files():
        target = pkg / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        data = file.read_bytes()
        target.write_bytes(data)
        records.append((f"neve/{rel}", data))
    info = site / f"neve-{neve.__version__}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    files = {
        "METADATA": (
            "Metadata-Version: 2.1\nName: neve\n"
            f"Version: {neve.__version__}\n"
            "Summary: neve inference server runtime (neve.server, neve.models)\n"
        ),
        "INSTALLER": "neve\n",
        "neve_runtime.json": json.dumps({"server_version": server_version}) + "\n",
    }
    for name, text in files.items():
        (info / name).write_text(text)
        records.append((f"{info.name}/{name}", text.encode()))
    lines = []
    for rel, data in records:
        digest = hashlib.sha256(data).digest()
        b64 = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        lines.append(f"{rel},sha256={b64},{len(data)}")
    lines.append(f"{info.name}/RECORD,,")
    (info / "RECORD").write_text("\n".join(lines) + "\n")


def _read_pins(path: Path) -> list[str]:
    pins = []
    for line in path.read_text().splitlines():
        text = line.split("#", 1)[0].strip().rstrip("\\").strip()
        if text and not text.startswith("-"):
            pins.append(text)
    return pins


def _same_pin(pin: str, have: dict[str, str]) -> bool:
    req = Requirement(pin)
    version = have.get(canonicalize_name(req.name))
    return version is not None and not req.url and req.specifier.contains(version, prereleases=True)


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
