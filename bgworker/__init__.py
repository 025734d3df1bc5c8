"""bgworker: build files in the background and hand them out over signed, expiring links."""

from bgworker.events import FileFailed, FileReady, FileRequested, Requester
from bgworker.handlers import JobContext, PermanentError, Registry
from bgworker.publisher import Publisher, SyncPublisher
from bgworker.settings import Settings
from bgworker.tokens import status_url

__all__ = [
    "FileFailed",
    "FileReady",
    "FileRequested",
    "JobContext",
    "PermanentError",
    "Publisher",
    "Registry",
    "Requester",
    "Settings",
    "SyncPublisher",
    "__version__",
    "status_url",
]

__version__ = "0.1.0"
