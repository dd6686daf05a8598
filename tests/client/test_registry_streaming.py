"""Model uploads and downloads stream: memory stays flat whatever the model weighs.

One real daemon, whose account limits uploads to ``LIMIT`` (settings.toml). A custom model
carries a ``WEIGHTS_MIB`` random (incompressible) numpy file as an artifact. Peak memory is the
kernel's high-water mark (``VmHWM`` in /proc/<pid>/status), reset just before the transfer
(``clear_refs``), so a buffer that lives for a millisecond still counts. The bound is an eighth
of the weights: a process that holds the archive at once grows by its size less the free heap
it can reuse (measured by keeping the received chunks in the daemon: +54 MiB; by sending
``bytes`` from the client: +179 MiB; streaming: +2 to +3 MiB).
"""

from __future__ import annotations

import filecmp
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import psutil
import pytest
from account_processes import stop_account_processes

import neve
from neve.errors import ObjectNotFoundError, PayloadTooLargeError

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="peak memory is read from Linux's /proc"
    ),
]

MIB = 1024 * 1024
WEIGHTS_MIB = 64
#: Uploads over this are refused; the weights fit once, not twice.
LIMIT = 96 * MIB
#: Bodies of the other REST routes are refused over this.
REQUEST_LIMIT = 4 * MIB
#: Allowed peak growth of a process during a transfer of the WEIGHTS_MIB model.
PEAK_BOUND = WEIGHTS_MIB * MIB // 8


class Weighted(neve.CustomModel):
    """y = x * w[0] + w[-1], with w a big array read from the model's artifact."""

    @neve.inference_api
    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        w = np.load(self.context.path("weights"), mmap_mode="r")
        return pd.DataFrame({"y": X["x"].to_numpy() * float(w[0]) + float(w[-1])})


def _rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def _peak(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := current RSS


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """(session, account home, daemon pid) of a daemon whose uploads are limited to LIMIT."""
    from neve.control import daemon

    home = tmp_path_factory.mktemp("limited-home")
    (home / "settings.toml").write_text(
        f"max_model_upload_bytes = {LIMIT}\nmax_request_body_bytes = {REQUEST_LIMIT}\n"
    )
    # what a daemon killed mid-upload leaves behind; the next daemon removes it
    stale = home / "tmp" / "uploads" / "upload-killed"
    stale.mkdir(parents=True)
    (stale / "upload.tar").write_bytes(b"\0" * 4096)
    session = neve.connect(home)
    try:
        yield session, home, daemon.read_info(home)["pid"]
    finally:
        session.close()
        stop_account_processes(home)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("weights") / "weights.npy"
    array = np.random.default_rng(7).random(WEIGHTS_MIB * MIB // 8)
    np.save(path, array)
    return path, array


@pytest.fixture(scope="module")
def reg(limited, tmp_path_factory) -> neve.Registry:
    """The registry, warmed up with a tiny model: imports and first-use caches of the daemon
    and of this process do not count in the measured transfers."""
    session, _, _ = limited
    registry = neve.Registry(session, database_name="ml", schema_name="streaming")
    tiny = tmp_path_factory.mktemp("tiny") / "tiny.npy"
    np.save(tiny, np.arange(4.0))
    model = Weighted(neve.ModelContext(artifacts={"weights": str(tiny)}))
    mv = registry.log_model(model, "warmup", sample_input_data=pd.DataFrame({"x": [1.0]}))
    mv.export(tmp_path_factory.mktemp("warm") / "export")
    return registry


def _uploads_left(home: Path) -> list[Path]:
    return sorted((home / "tmp" / "uploads").glob("*"))


def _stored(home: Path) -> list[str]:
    from neve.control.account import Account

    account = Account.open(str(home))
    try:
        return account.registry.store.keys()
    finally:
        account.close()


def test_peak_measurement_sees_a_short_lived_buffer() -> None:
    """The check the memory bounds rest on: a buffer freed at once still raises VmHWM."""
    pid = psutil.Process().pid
    _reset_peak(pid)
    before = _rss(pid)
    buffer = bytearray(WEIGHTS_MIB * MIB)
    buffer[::4096] = b"x" * len(buffer[::4096])  # touch every page
    del buffer
    assert _peak(pid) - before >= WEIGHTS_MIB * MIB * 0.9


def test_log_and_download_keep_memory_flat(reg, limited, weights, tmp_path: Path) -> None:
    _, home, daemon_pid = limited
    path, array = weights
    model = Weighted(neve.ModelContext(artifacts={"weights": str(path)}))
    data = pd.DataFrame({"x": [1.0, 2.0, -3.5]})
    me = psutil.Process().pid

    daemon_before, client_before = _rss(daemon_pid), _rss(me)
    _reset_peak(daemon_pid)
    _reset_peak(me)
    mv = reg.log_model(model, "big", sample_input_data=data)
    daemon_growth = _peak(daemon_pid) - daemon_before
    client_growth = _peak(me) - client_before
    print(
        f"\nlog_model of {WEIGHTS_MIB} MiB: daemon RSS {daemon_before / MIB:.1f} MiB -> peak "
        f"{_peak(daemon_pid) / MIB:.1f} MiB (+{daemon_growth / MIB:.1f}); client peak "
        f"+{client_growth / MIB:.1f} MiB"
    )
    assert daemon_growth < PEAK_BOUND, f"daemon peak grew {daemon_growth / MIB:.1f} MiB"
    assert client_growth < PEAK_BOUND, f"client peak grew {client_growth / MIB:.1f} MiB"
    assert _uploads_left(home) == []

    daemon_before, client_before = _rss(daemon_pid), _rss(me)
    _reset_peak(daemon_pid)
    _reset_peak(me)
    exported = mv.export(tmp_path / "export")
    daemon_growth = _peak(daemon_pid) - daemon_before
    client_growth = _peak(me) - client_before
    print(f"export: daemon peak +{daemon_growth / MIB:.1f} MiB, client +{client_growth / MIB:.1f}")
    assert daemon_growth < PEAK_BOUND, f"daemon peak grew {daemon_growth / MIB:.1f} MiB"
    assert client_growth < PEAK_BOUND, f"client peak grew {client_growth / MIB:.1f} MiB"

    # the round trip gives back the same bytes, the same object, the same answers
    stored = next(exported.rglob("weights.npy"))
    assert filecmp.cmp(stored, path, shallow=False)
    loaded = mv.load()
    assert type(loaded).__name__ == "Weighted"  # the class travels by value (cloudpickle)
    np.testing.assert_array_equal(np.load(loaded.context.path("weights")), array)
    pd.testing.assert_frame_equal(loaded.predict(data), model.predict(data))
    out = mv.run(data)
    np.testing.assert_array_equal(out["y"].to_numpy(), model.predict(data)["y"].to_numpy())


def test_upload_over_the_limit_is_refused_and_leaves_nothing(reg, limited, weights) -> None:
    _, home, _ = limited
    path, _ = weights
    stored_before = _stored(home)
    # the same weights twice: the archive is twice WEIGHTS_MIB, over LIMIT
    model = Weighted(neve.ModelContext(artifacts={"weights": str(path), "copy": str(path)}))
    with pytest.raises(PayloadTooLargeError) as err:
        reg.log_model(model, "too_big", sample_input_data=pd.DataFrame({"x": [1.0]}))
    message = str(err.value)
    assert "ML.STREAMING.TOO_BIG" in message and "max_model_upload_bytes" in message
    assert f"limit of 96.0 MiB ({LIMIT} bytes)" in message
    with pytest.raises(ObjectNotFoundError):
        reg.get_model("too_big")
    assert _stored(home) == stored_before
    assert _uploads_left(home) == []


class _CountedBody:
    """A chunked body of ``mib`` MiB of spaces (httpx sends an iterable chunked) that counts
    what the client got to send."""

    def __init__(self, mib: int) -> None:
        self.mib = mib
        self.sent = 0

    def __iter__(self):
        for _ in range(self.mib):
            self.sent += MIB
            yield b" " * MIB


def _raw_client(limited, token: str | None = None) -> httpx.Client:
    session, _, _ = limited
    return httpx.Client(
        base_url=session._transport.base_url,
        headers={"Authorization": f"Bearer {token or session.token}"},
        timeout=60,
        trust_env=False,
    )


def test_daemon_start_removes_uploads_a_killed_daemon_left(limited) -> None:
    _, home, _ = limited
    assert not (home / "tmp" / "uploads" / "upload-killed").exists()
    log = (home / "logs" / "control.log").read_text()
    assert "removed 1 upload(s) a previous daemon left" in log


@pytest.mark.parametrize(
    ("model", "denied"),
    [("new_model", "needs CREATE MODEL"), ("warmup", "does not own")],
    ids=["create-model", "not-the-owner"],
)
def test_caller_without_privilege_is_refused_before_the_body(reg, limited, model, denied) -> None:
    """A 403 comes before the body is read: of a 512 MiB chunked body, the daemon takes in
    what the sockets buffer, not the whole; nothing is stored and no upload is left."""
    session, home, _ = limited
    session.sql("CREATE USER IF NOT EXISTS viewer PASSWORD = 'viewer password'").collect()
    # viewer may see the schema (so the refusal is about the model), nothing more
    session.sql("GRANT USAGE ON DATABASE ml TO ROLE PUBLIC").collect()
    session.sql("GRANT USAGE ON SCHEMA ml.streaming TO ROLE PUBLIC").collect()
    with _raw_client(limited) as client:
        login = client.post("/api/v1/login", json={"user": "viewer", "password": "viewer password"})
    assert login.status_code == 200, login.text
    body = _CountedBody(512)
    stored_before = _stored(home)
    with _raw_client(limited, login.json()["token"]) as client:
        resp = client.post(f"/api/v1/models/ml/streaming/{model}/versions", content=body)
    assert resp.status_code == 403, resp.text
    message = resp.json()["message"]
    assert denied in message and "ML.STREAMING" in message, message
    assert body.sent < 128 * MIB, f"{body.sent // MIB} MiB of the body were sent before the 403"
    print(f"{model}: {body.sent // MIB} MiB of 512 MiB sent before the 403")
    assert _stored(home) == stored_before
    assert _uploads_left(home) == []


def test_chunked_body_is_cut_at_the_limit(reg, limited) -> None:
    """No Content-Length to refuse up front: the daemon stops writing once LIMIT is passed."""
    _, home, _ = limited

    def body():  # a generator: httpx sends it chunked
        for _ in range(LIMIT // MIB + 8):
            yield b"\0" * MIB

    with _raw_client(limited) as client:
        resp = client.post("/api/v1/models/ml/streaming/chunked/versions", content=body())
    assert resp.status_code == 413, resp.text
    assert resp.json()["code"] == "PAYLOAD_TOO_LARGE"
    assert "larger than the account's limit of 96.0 MiB" in resp.json()["message"]
    assert _uploads_left(home) == []
    with pytest.raises(ObjectNotFoundError):
        reg.get_model("chunked")


def test_damaged_upload_is_refused_by_its_checksum(reg, limited, tmp_path: Path) -> None:
    from neve.models import save_model
    from neve.registry import archive

    _, home, _ = limited
    tiny = tmp_path / "tiny.npy"
    np.save(tiny, np.arange(3.0))
    payload = tmp_path / "payload"
    save_model(
        Weighted(neve.ModelContext(artifacts={"weights": str(tiny)})),
        payload / "model",
        sample_input=pd.DataFrame({"x": [1.0]}),
    )
    packed = archive.pack_file(payload, tmp_path / "upload.tar")
    body = bytearray(packed.path.read_bytes())
    body[len(body) // 2] ^= 0xFF  # one bit flipped on the way
    with _raw_client(limited) as client:
        resp = client.post(
            "/api/v1/models/ml/streaming/damaged/versions",
            content=bytes(body),
            headers={"X-Neve-Upload-Sha256": packed.sha256},
        )
        assert resp.status_code == 400, resp.text
        assert "arrived damaged" in resp.json()["message"]
        assert packed.sha256 in resp.json()["message"]
        with pytest.raises(ObjectNotFoundError):
            reg.get_model("damaged")
        # the intact archive with its checksum is accepted
        resp = client.post(
            "/api/v1/models/ml/streaming/damaged/versions",
            content=archive.FileChunks(packed.path),
            headers={
                "X-Neve-Upload-Sha256": packed.sha256,
                "Content-Length": str(packed.size),
            },
        )
    assert resp.status_code == 201, resp.text
    assert len(reg.get_model("damaged").version(resp.json()["name"]).show_functions()) == 1
    assert _uploads_left(home) == []


def test_other_request_bodies_are_limited_too(limited) -> None:
    """max_request_body_bytes bounds every other route (SQL here): 413 naming the setting,
    declared or chunked, and the connection is closed rather than drained."""
    body = _CountedBody(256)
    with _raw_client(limited) as client:
        declared = client.post(
            "/api/v1/sql",
            content=b"{" + b" " * REQUEST_LIMIT + b"}",
            headers={"Content-Type": "application/json"},
        )
        chunked = client.post("/api/v1/sql", content=body)
        small = client.post("/api/v1/sql", json={"sql": "SELECT 41 + 1 AS answer"})
    for resp in (declared, chunked):
        assert resp.status_code == 413, resp.text
        assert "max_request_body_bytes" in resp.json()["message"]
        assert "POST /api/v1/sql" in resp.json()["message"]
    assert body.sent < 64 * MIB, f"{body.sent // MIB} MiB of 256 MiB were sent before the 413"
    assert small.status_code == 200 and small.json()["rows"] == [[42]]
