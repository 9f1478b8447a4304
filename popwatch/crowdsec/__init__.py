"""CrowdSec bridge: share popwatch's bans with a fleet through a CrowdSec Local API (LAPI).

* Push (``machine_id`` + ``password``): popwatch logs in as a CrowdSec *machine*
  (``POST /v1/watchers/login`` -> JWT; with ``register = true`` it first registers itself,
  ``POST /v1/watchers``, and waits for ``cscli machines validate``) and sends every ban made on
  this host (key, auto, CLI, undo) as an alert carrying one ``ban`` decision: scenario
  ``popwatch/<origin>``, the ban's duration, the reason in the alert message. Every host's
  bouncer then enforces it. A person's unban deletes the decision again (``push_unbans``).
* Pull (``bouncer_key``): popwatch follows ``GET /v1/decisions/stream`` like a bouncer and
  publishes the active ban decisions to ``StateStore.fleet_bans`` ("banned fleet-wide
  (origin)"), checking each against this host's kernel set (``Firewall.bans()``). With
  ``apply = true`` it also bans single addresses in its own set (origin ``crowdsec``; protected
  addresses are refused as always) and lifts them when the decision goes away.

The LAPI never blocks a local ban: bans are queued (bounded) and sent by a task that talks HTTP
on a worker thread (urllib, standard library only), with timeouts and exponential backoff. Its
state shows in the header as two sources, ``crowdsec push`` and ``crowdsec pull``, and in the
store's notes when it changes.
"""

from __future__ import annotations

from ..config import CROWDSEC_APPLY_ORIGINS as APPLY_ORIGINS
from ..config import CROWDSEC_DOC as CONFIG_DOC
from ..config import CROWDSEC_KEYS as KEYS
from ..config import CrowdSecConfig
from ..config import crowdsec_table as from_table
from . import bridge, client
from .bridge import (
                     FLUSH_TIMEOUT,
                     NO_PUSH,
                     OUTBOX_MAX,
                     PERMANENT,
                     PULL_NAME,
                     PUSH_NAME,
                     UNBAN_PUSH,
                     CrowdSecBridge,
                     FleetDecision,
)
from .client import Lapi, LapiError, go_duration, parse_go_duration

__all__ = ["APPLY_ORIGINS", "CONFIG_DOC", "FLUSH_TIMEOUT", "KEYS", "NO_PUSH", "OUTBOX_MAX", "PERMANENT",
           "PULL_NAME", "PUSH_NAME", "UNBAN_PUSH", "CrowdSecBridge", "CrowdSecConfig", "FleetDecision", "Lapi",
           "LapiError", "bridge", "client", "from_table", "go_duration", "parse_go_duration"]
