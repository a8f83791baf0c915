"""The daemon's error hierarchy: one short, user-facing message per boundary."""


class SafeguardError(Exception):
    """Base of every error the daemon reports to the user in one line."""


class ConfigError(SafeguardError):
    """The configuration file is missing, unreadable or invalid."""


class ModelError(SafeguardError):
    """A model file is missing, corrupt, or cannot be loaded by the runtime."""


class CaptureError(SafeguardError):
    """An audio or video source cannot be opened or read."""


class DeliveryError(SafeguardError):
    """An alert could not be stored or handed to a delivery channel."""
