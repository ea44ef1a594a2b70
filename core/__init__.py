"""The kernel every area imports: settings, the declarative config, the event contract
and its limits, the clock, redaction and the Pub/Sub client helpers.

It imports no other package of the project (checked by ``make lint``'s layering
contract), so any room of the house can use it without an arrow running back up.
"""
