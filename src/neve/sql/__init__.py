"""The SQL surface: management statements and warehouse queries with service/model functions.

- ``engine``: ``SqlEngine(account).execute(ctx, text) -> SqlResult`` (the entry point)
- ``lexer`` / ``parser``: tokens, statement splitting, ``!`` calls, management statements
- ``statements``: each management statement -> one manager call; SHOW rows and LIKE
- ``query`` / ``warehouse``: planning and running queries on the account's DuckDB file
- ``udf``: vectorized Arrow UDFs (service functions, warehouse model functions)
- ``functions``: ``<SERVICE>_<METHOD>`` functions in the catalog and their batching options
- ``objects``: databases and schemas
"""
