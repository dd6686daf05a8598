"""Models: the list, one model's versions (methods and signatures, tags, aliases, metrics,
services using each version, warehouse eligibility), and a build job with its log."""

from __future__ import annotations

from starlette.responses import Response

from neve.console.views import Viewer, attempt, qualified
from neve.identifiers import ident


def models_list(viewer: Viewer) -> Response:
    q = viewer.query.get("q", "").strip().lower()
    models, error = attempt(viewer.account.registry.show_models, viewer.ctx, in_account=True)
    models = [
        mdl
        for mdl in models or []
        if not q or q in f"{mdl['database_name']}.{mdl['schema_name']}.{mdl['name']}".lower()
    ]
    return viewer.page("models.html", models=models, error=error, q=viewer.query.get("q", ""))


def model_page(viewer: Viewer) -> Response:
    registry, ctx = viewer.account.registry, viewer.ctx
    qn = qualified(viewer.path, "model")
    model, error = attempt(registry.describe_model, ctx, qn)
    if model is None:
        return viewer.page("error.html", http_status=404, title=str(qn), message=error)
    versions = []
    for name in model["versions"]:
        version, _ = attempt(registry.describe_version, ctx, qn, name)
        if version is not None:
            version["eligible_in_warehouse"] = not version.get("platform_reasons")
            versions.append(version)
    return viewer.page("model.html", qn=qn, model=model, versions=versions)


def build_job(viewer: Viewer) -> Response:
    envs, ctx = viewer.account.environments, viewer.ctx
    name = ident(viewer.path["job"], kind="job name")
    job, error = attempt(envs.get_job, ctx, name)
    if job is None:
        return viewer.page("error.html", http_status=404, title=name, message=error)
    log, log_error = attempt(envs.job_logs, ctx, name)
    return viewer.page("build.html", job=job, log=log or "", log_error=log_error)
