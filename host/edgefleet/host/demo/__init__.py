"""``edgefleet demo``: a throwaway fleet on this machine, from quantization to live predictions.

- ``_run``: the demo's steps in order (fleet, broker, agents, model, push, live inference);
- ``_brokers``: the loopback broker it starts (mosquitto, or amqtt in-process);
- ``_agents``: real ``edgefleet-agent`` processes made from their bundles;
- ``_data``: which model and held-out scans it uses;
- ``_live``: dropping scans into watched folders and collecting the predictions;
- ``_summary``: what it reports, as data and as text.
"""

from __future__ import annotations

from edgefleet.host.demo._run import DemoOptions, run_demo
from edgefleet.host.demo._summary import Summary, format_summary

__all__ = [
    "DemoOptions",
    "Summary",
    "format_summary",
    "run_demo",
]
