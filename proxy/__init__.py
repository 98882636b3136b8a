"""defender-proxy: a sidecar reverse proxy for the Microsoft Defender API.

The path of one request through the package: ``guard`` → ``routing`` → (quota) → ``forward`` →
``classify`` → ``metrics`` / ``logs``; ``app`` wires them, ``cli`` starts them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
