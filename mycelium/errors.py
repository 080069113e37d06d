"""Exception types of Mycelium. Every message names the offending value and the fix."""


class MyceliumError(Exception):
    """Base class of every error that Mycelium raises on purpose."""


class ConfigError(MyceliumError, ValueError):
    """A setting in params.yaml or a constructor argument is invalid."""


class DataValidationError(MyceliumError, ValueError):
    """A batch failed its data expectations. The batch was quarantined, not dropped."""

    def __init__(self, message: str, quarantine_path: str | None = None):
        super().__init__(message)
        self.quarantine_path = quarantine_path


class EmptyDataError(DataValidationError):
    """A batch or window has no rows. Empty data is never a pass."""


class RoutingError(MyceliumError, LookupError):
    """No domain could be chosen for an input, or a tag is unknown."""


class ChainCycleError(RoutingError):
    """Declared upstream inputs would make the chain graph cyclic. ``cycle`` lists the domains
    in data-flow order, starting and ending with the same domain."""

    def __init__(self, message: str, cycle: list[str]):
        super().__init__(message)
        self.cycle = cycle


class IllegalTransitionError(MyceliumError):
    """A lifecycle transition that the state machine does not allow."""


class IntegrityError(MyceliumError):
    """A stored file is missing, truncated or does not match its recorded sha256."""


class StorageError(MyceliumError):
    """A cold-storage or DVC operation failed."""


class RememberTimeoutError(MyceliumError, TimeoutError):
    """A request waited longer than ``remembering.wait_timeout_s`` for another process to
    finish restoring a domain. Its batch was quarantined, not dropped."""

    def __init__(self, message: str, quarantine_path: str | None = None):
        super().__init__(message)
        self.quarantine_path = quarantine_path


class DomainBusyError(MyceliumError, TimeoutError):
    """A patch training waited longer than ``remembering.wait_timeout_s`` for another process
    that held the domain's lock (training, freezing or restoring it)."""


class PatchRejectedError(MyceliumError):
    """A trained patch did not reach ``patch.min_accuracy_gain`` on its held-out rows, so it was
    not registered. ``data_path`` is the file that keeps the rows it was trained on."""

    def __init__(self, message: str, data_path: str | None = None):
        super().__init__(message)
        self.data_path = data_path


class InputError(MyceliumError, ValueError):
    """A data file or argument given to Mycelium is missing, unreadable or inconsistent,
    for example a file that does not exist or a column that a command needs."""


def one_line(exc: BaseException) -> str:
    """Return the message of ``exc`` on one line, for event logs and flow results."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines) or type(exc).__name__
