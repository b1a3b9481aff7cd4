"""The audit trail: one JSON log line (logger `embeddings.audit`) per key change and per
cache clear, naming who did it (an admin key's id, `public` in open mode, or `cli`).
Never a key's secret."""

from __future__ import annotations

import logging

log = logging.getLogger("embeddings.audit")


def audit(event: str, actor: str, **details: object) -> None:
    """E.g. audit("key_revoked", actor="3f2a...", key_id="9b1c...", via="http")."""
    log.info(event, extra={"audit": event, "actor": actor, **details})
