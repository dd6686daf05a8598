"""Arrow IPC streams: the columnar wire format of the service-function protocol.

A request body of Content-Type :data:`ARROW_STREAM` holds one column per method input; the
answer holds one column per output, row for row. The inference server, the service invoker, the
control plane's invoke route and the Python client all read and write it through these helpers.
pyarrow is imported on first use, so a JSON-only caller never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

ARROW_STREAM = "application/vnd.apache.arrow.stream"


def is_arrow(content_type: str | None) -> bool:
    """Whether a Content-Type header names an Arrow IPC stream (parameters ignored)."""
    if not content_type:
        return False
    return content_type.split(";")[0].strip().lower() == ARROW_STREAM


def write_stream(table: pa.Table | pa.RecordBatch) -> bytes:
    """One table as the bytes of an Arrow IPC stream."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write(table)
    return sink.getvalue().to_pybytes()


def read_stream(body: bytes) -> pa.Table:
    """The table of an Arrow IPC stream; raises ``pyarrow.ArrowInvalid`` on anything else."""
    import pyarrow as pa

    return pa.ipc.open_stream(pa.py_buffer(body)).read_all()
