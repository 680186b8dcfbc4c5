"""Python SDK of ttsq, the queue-driven text-to-speech service.

::

    import ttsq

    with ttsq.Client.from_env() as client:        # TTSQ_URL, TTSQ_API_KEY
        audio = client.synthesize("Hello there.", dialect="en-gb")
        task = client.submit("Later is fine.", dialect="fr-fr", format="wav")
        task = client.wait(task.id)
        wav = client.audio(task.id)

:class:`AsyncClient` offers the same calls to ``await``.
"""

from ._async_client import AsyncClient
from ._base import DEFAULT_URL, ENV_API_KEY, ENV_URL, MAX_BATCH_ITEMS, NO_RETRIES, RetryPolicy
from ._client import Client
from ._version import __version__
from .errors import (
    ApiConnectionError,
    ApiError,
    ApiTimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    FieldError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TtsqError,
    UnexpectedResponseError,
    UnprocessableEntityError,
    WaitTimeoutError,
    WebhookVerificationError,
)
from .models import (
    Batch,
    BatchItem,
    BatchResult,
    BatchSubmission,
    Dialect,
    Job,
    Mark,
    Speech,
    StatusCounts,
    Task,
    TaskError,
    TaskPage,
    TaskStatus,
    Usage,
    UsageDay,
    Voice,
    WebhookEvent,
)
from .webhooks import DEFAULT_TOLERANCE, sign_webhook, verify_webhook

__all__ = [
    "DEFAULT_TOLERANCE",
    "DEFAULT_URL",
    "ENV_API_KEY",
    "ENV_URL",
    "MAX_BATCH_ITEMS",
    "NO_RETRIES",
    "ApiConnectionError",
    "ApiError",
    "ApiTimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Batch",
    "BatchItem",
    "BatchResult",
    "BatchSubmission",
    "Client",
    "ConflictError",
    "Dialect",
    "FieldError",
    "Job",
    "Mark",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RetryPolicy",
    "ServerError",
    "Speech",
    "StatusCounts",
    "Task",
    "TaskError",
    "TaskPage",
    "TaskStatus",
    "TtsqError",
    "UnexpectedResponseError",
    "UnprocessableEntityError",
    "Usage",
    "UsageDay",
    "Voice",
    "WaitTimeoutError",
    "WebhookEvent",
    "WebhookVerificationError",
    "__version__",
    "sign_webhook",
    "verify_webhook",
]
