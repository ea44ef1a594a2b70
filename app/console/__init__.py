"""The web console at ``/console``: static HTML, CSS and vanilla JS, no build step.

The page reads ``/healthz`` (no token) and the admin API with the token the operator
types; the token lives in the tab's sessionStorage only and is sent as a bearer
header, never shown, never put in a URL.
"""
