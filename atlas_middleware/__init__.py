"""atlas-middleware: an ATLAS-style teacher between your application and its LLM.

A teacher model diagnoses the student (your model) with a short probe, injects guidance,
and a non-degradation policy makes sure the delivered answer is never worse than the
student alone. Every call gets a ``CallReport`` of decisions and exact per-role tokens,
and is appended to a ledger.

    from atlas_middleware import Atlas, report_of
    atlas = Atlas(teacher="hosted_vllm/Arc-Intelligence/ATLAS-8B-Thinking",
                  teacher_api_base="http://127.0.0.1:8001/v1", policy="strict")
    resp = atlas.completion(model="openai/gpt-4o-mini", messages=[...])
    report = report_of(resp)          # the call's CallReport (also resp.atlas)
    report.decision, report.tokens_saved
"""

import os as _os

# LiteLLM fetches its model cost map from GitHub the first time it is imported unless told
# not to: offline, that is a failed fetch and a logged error in every process, and online a
# network call the user did not ask for. Every module here that imports LiteLLM (the
# provider, the proxy's hooks) runs this first; the package's own copy of the map is used,
# as LiteLLM's proxy CLI does, unless the user set the variable themselves.
_os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from . import _moved  # noqa: E402
from .attach import report_of  # noqa: E402
from .client import Atlas
from .config import AtlasConfig
from .errors import (
    AtlasError,
    ConfigError,
    InvalidRequestError,
    JudgeError,
    LedgerError,
    MissingExtraError,
    QueueFullError,
    TeacherError,
    TeacherOutputError,
    TeacherTimeout,
)
from .messages import ChatRequest, ChatResponse, ToolCall
from .report import CallReport, Reason
from .teaching.judges import AnswerJudge, CallableJudge, Judge, TeacherJudge, Verdict
from .usage import Usage, UsageByRole

_moved.install()  # the old import paths of moved modules, for one release (``_moved.py``)

__version__ = "0.1.0"

__all__ = [
    "AnswerJudge",
    "Atlas",
    "AtlasConfig",
    "AtlasError",
    "CallReport",
    "CallableJudge",
    "ChatRequest",
    "ChatResponse",
    "ConfigError",
    "InvalidRequestError",
    "Judge",
    "JudgeError",
    "LedgerError",
    "MissingExtraError",
    "QueueFullError",
    "Reason",
    "TeacherError",
    "TeacherJudge",
    "TeacherOutputError",
    "TeacherTimeout",
    "ToolCall",
    "Usage",
    "UsageByRole",
    "Verdict",
    "__version__",
    "report_of",
]
