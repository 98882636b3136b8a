"""A stand-in Defender API: the upstream the demo, the tests and the benchmarks put behind the proxy.

Callers choose each answer with the ``X-Simulate`` request header (see ``directives``); a
sliding-window quota (see ``quota``) throttles like the real API; ``/_sim/stats`` and
``/_sim/reset`` let a test read and clear what the simulator saw.
"""

from __future__ import annotations

from proxy.simulator.app import SimConfig, make_app, serve

__all__ = ["SimConfig", "make_app", "serve"]
