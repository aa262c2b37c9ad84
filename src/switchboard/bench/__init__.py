"""``switchboard bench``: the load generator operators run before they trust a relay.

It drives real meetings (created through the API, joined with invitations over
TLS, every feature of the relay on) and reports what an operator sizes a
deployment by: server CPU per delivered frame, deliveries per second, one-way
latency percentiles from an HDR histogram, delivery ratio, memory, and the
generator's own CPU, so a reader can tell the generator was not the limit.
The same generator drives the peer relays in ``benchmarks/`` for side-by-side
comparisons. Needs the ``bench`` extra (picows, hdrhistogram, numpy).
"""

from __future__ import annotations

from .scenarios import SCENARIOS, Scenario, Stream

__all__ = ["SCENARIOS", "Scenario", "Stream"]
