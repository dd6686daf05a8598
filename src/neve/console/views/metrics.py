"""A service's metrics plots: the page (uPlot charts) and the JSON it polls."""

from __future__ import annotations

from starlette.responses import JSONResponse, Response

from neve.console.metrics_history import SERIES, MetricsHistory
from neve.console.views import Viewer, attempt, qualified
from neve.console.views.service import service_url
from neve.errors import NeveError

#: The windows a viewer can pick, in seconds.
WINDOWS = {"5m": 300, "1h": 3600}


def _history(viewer: Viewer) -> MetricsHistory:
    return viewer.request.app.state.metrics_history


def metrics_page(viewer: Viewer) -> Response:
    qn = qualified(viewer.path, "service")
    # the same check as the metrics API: MONITOR on the service
    _, error = attempt(viewer.account.services.show_containers, viewer.ctx, qn)
    if error:
        return viewer.page("error.html", http_status=403, title=f"Metrics of {qn}", message=error)
    _history(viewer).watch(viewer.ctx, str(qn))
    window = viewer.query.get("window", "5m")
    return viewer.page(
        "metrics.html",
        qn=qn,
        url=service_url(qn),
        series=SERIES,
        window=window if window in WINDOWS else "5m",
        windows=WINDOWS,
    )


def metrics_data(viewer: Viewer) -> Response:
    qn = qualified(viewer.path, "service")
    try:
        viewer.account.services.show_containers(viewer.ctx, qn)  # MONITOR, as above
    except NeveError as err:
        return JSONResponse(err.to_dict(), status_code=err.http_status)
    history = _history(viewer)
    history.watch(viewer.ctx, str(qn))
    last = WINDOWS.get(viewer.query.get("window", "5m"), WINDOWS["5m"])
    return JSONResponse(history.series(str(qn), last))
