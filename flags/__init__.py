"""Per-client read stages (old, shadow, new) in Unleash flags, the gate and the audit.

Each stage flag holds a pilot list, a cohort by clientId hash and its held-back
exceptions (:mod:`flags.stages`), so any number of clients fits Unleash's default limits.

Light to import (the CLI mounts it on every command); the SDK-backed reader is in
:mod:`flags.evaluator`, the orchestration in :mod:`flags.service`.
"""

from .stages import ClientIdError, FlagError, Stage, flag_name

__all__ = ["ClientIdError", "FlagError", "Stage", "flag_name"]
