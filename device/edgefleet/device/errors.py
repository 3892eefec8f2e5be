"""Errors raised by the device agent.

Tree (under ``edgefleet.shared.errors.EdgefleetError``)::

    DeviceError                  anything the agent raises on purpose
    ├── ConfigError              agent.toml is missing, unreadable or invalid
    ├── RuntimeUnavailableError  no LiteRT / tflite-runtime backend can be imported
    ├── DelegateError            the Edge TPU delegate (libedgetpu) could not be loaded
    ├── ModelLoadError           a model could not be loaded or run in this process (the one
    │                            ModelLoadError: the host raises it for Keras models too)
    ├── InferenceError           the active model failed on one input (its invoke raised)
    ├── HealthCheckError         a staged model failed its child-process health check
    ├── WorkerGoneError          the warm health-check worker ended before it answered
    └── StoreError               the state directory is unusable (layout, permissions)

    InputError (edgefleet.shared)
    └── InputLimitError          an input is over a ``[limits]`` setting (refused, not retried)
"""

from __future__ import annotations

from edgefleet.shared.errors import EdgefleetError, InputError


class DeviceError(EdgefleetError):
    """Root of every error the device agent raises on purpose."""


class ConfigError(DeviceError):
    """The agent configuration is missing, unreadable or invalid."""


class RuntimeUnavailableError(DeviceError):
    """No interpreter backend can be imported on this machine."""


class DelegateError(DeviceError):
    """The Edge TPU delegate could not be loaded.

    Attributes:
        device: the device string passed to ``load_delegate`` (``usb``, ``pci``, ``:0``).
    """

    def __init__(self, message: str, *, device: str) -> None:
        super().__init__(message)
        self.device = device


class ModelLoadError(DeviceError):
    """A model file could not be loaded, allocated or invoked in this process.

    The one ModelLoadError of edgefleet: it lives here because the device must not import
    the host, and the host (which may import the device) raises it for a Keras model too.
    """


class InferenceError(DeviceError):
    """The loaded model failed on one real input (the interpreter's invoke raised).

    Not a ModelLoadError: the model is loaded and may work on the next input; the agent
    contains it per input and counts it against the model (``[safety] model_failures``).
    """


# Health-check outcomes that say the model is bad; a timeout or a kill under load does not.
VERDICT_REASONS = frozenset({"crashed", "load", "spec_mismatch", "invoke"})


class HealthCheckError(DeviceError):
    """A staged model failed its health check.

    Attributes:
        reason: machine code: ``crashed`` (SIGSEGV/SIGABRT/SIGBUS/SIGILL/SIGFPE), ``load``,
            ``spec_mismatch``, ``invoke`` (verdicts on the model); ``timeout``, ``killed``
            (SIGKILL, e.g. the OOM killer) or ``exited`` (no verdict: the box, not the model).
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

    @property
    def verdict(self) -> bool:
        """True if the model itself failed (remember it); False for a transient failure."""
        return self.reason in VERDICT_REASONS


class WorkerGoneError(DeviceError):
    """The warm health-check worker ended before it answered (the check is run cold instead)."""


class StoreError(DeviceError):
    """The agent's state directory cannot be used."""


class InputLimitError(InputError):
    """An input is over one of the ``[limits]`` of agent.toml; the message names the key.

    Attributes:
        key: the setting to raise, e.g. ``limits.max_pixels``.
    """

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key
