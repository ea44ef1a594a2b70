"""The admin side of the service: read models and actions behind the admin token.

Route handlers (``app.api.routes.admin``) and the web console (``app.console``) only
call these functions; they assemble what the other areas already store (flag stages
and their audit, the backfill ledger and runs, verification results, shadow
mismatches, subscription counters) and never re-implement a rule of those areas:
stage changes go through :class:`flags.service.FlagService` and its gate.
"""
