"""API integrations and external functions: SQL that scores rows through another installation.

An *API integration* (account level, in the integrations' namespace, privilege USAGE) names the
URLs external functions may call and the key they send::

    CREATE [OR REPLACE] API INTEGRATION [IF NOT EXISTS] shared_api
      API_PROVIDER = neve
      API_ALLOWED_PREFIXES = ('https://other-host:8443/svc/')
      [API_BLOCKED_PREFIXES = ('https://other-host:8443/svc/ML.PRIVATE.')]
      API_KEY = '<a token of the remote installation>'
      ENABLED = TRUE [COMMENT = '...']

The key is sealed with the account's key (``neve.security.sealed``) and never shown: SHOW and
DESCRIBE say only whether one is set. An *external function* (``functions.kind = EXTERNAL``,
owned by the role that created it) calls one URL inside those prefixes::

    CREATE [OR REPLACE] EXTERNAL FUNCTION [IF NOT EXISTS] f(a NUMBER, b NUMBER) RETURNS FLOAT
      API_INTEGRATION = shared_api [MAX_BATCH_ROWS = n ...] [COMMENT = '...']
      AS 'https://other-host:8443/svc/ML.REG.FORECAST_SVC/predict'

Creating one needs CREATE FUNCTION on the schema and USAGE on the integration, which must be
enabled and allow the URL; calling one needs USAGE on the function (its owner has it). A query
sends the function's rows in batches of ``MAX_BATCH_ROWS`` (the same vectorized UDF and batch
options as a service function, :mod:`neve.sql.udf`), each as the external-function data format
``{"data": [[row_index, a, b], ...]}`` with the key as ``Authorization: Bearer``, and reads
``{"data": [[row_index, result], ...]}`` back: the format a neve ingress endpoint speaks (a
result that is an object of one output is taken as that output's value).

Argument and return types: NUMBER/DECIMAL/FLOAT/DOUBLE travel as JSON numbers (DOUBLE in the
query), INT/INTEGER/BIGINT as integers (BIGINT), VARCHAR as strings, BOOLEAN, TIMESTAMP as ISO
text; RETURNS OBJECT / VARIANT / ARRAY gives the answered value as JSON text (VARCHAR).
"""

from neve.sql.external.caller import ExternalCaller
from neve.sql.external.functions import (
    RESULT,
    ExternalTarget,
    bind,
    create_external_function,
    function_details,
)
from neve.sql.external.integrations import (
    API,
    EXTERNAL_ACCESS,
    HIDDEN,
    KIND_EXTERNAL,
    PROVIDERS,
    ApiIntegrations,
    api_integration_row,
)
from neve.sql.external.urls import check_url, matches, remote_service

__all__ = [
    "API",
    "ApiIntegrations",
    "EXTERNAL_ACCESS",
    "ExternalCaller",
    "ExternalTarget",
    "HIDDEN",
    "KIND_EXTERNAL",
    "PROVIDERS",
    "RESULT",
    "api_integration_row",
    "bind",
    "check_url",
    "create_external_function",
    "function_details",
    "matches",
    "remote_service",
]
