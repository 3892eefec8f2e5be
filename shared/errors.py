"""The exception root shared by every edgefleet package.

Tree (each package adds its own branch under ``EdgefleetError``)::

    EdgefleetError
    ├── ProtocolError              (edgefleet.shared) wire protocol violations
    ├── HostError                  (edgefleet.host.errors)
    └── DeviceError                (edgefleet.device.errors)
"""

from __future__ import annotations


class EdgefleetError(Exception):
    """Root of every error edgefleet raises on purpose."""


class ProtocolError(EdgefleetError):
    """A message, topic, manifest or chunk breaks the wire protocol."""
