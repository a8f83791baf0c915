"""Safeguard's edge daemon: capture, inference, detection, alerting, health."""

__version__ = "0.1.0"
