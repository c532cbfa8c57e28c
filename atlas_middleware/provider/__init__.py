"""A LiteLLM custom provider: ``litellm.completion(model="atlas/<student model>", ...)``.

    import litellm
    from atlas_middleware.provider import register
    register(teacher="hosted_vllm/Arc-Intelligence/ATLAS-8B-Thinking",
             teacher_api_base="http://127.0.0.1:8001/v1")
    resp = litellm.completion(model="atlas/openai/gpt-4o-mini", messages=[...])
    resp.atlas.decision                       # the CallReport

Sync, async and ``stream=True`` calls run the teaching loop around the student named after
``atlas/``. Teacher, policy and ledger come from the provider's configuration (keywords, an
``AtlasConfig``, YAML or ``ATLAS_*`` variables, as for ``Atlas``). Per-request options go
in ``metadata={"atlas": {"teach": False, "policy": "verify", "session_id": "...", "task": "..."}}``
(or the ``x-atlas-teach``, ``x-atlas-policy``, ``x-atlas-session-id``, ``x-atlas-task``,
``x-atlas-learn`` headers).

Tenants (``_tenants.py``): called directly, a call's tenant is the one it names
(``metadata={"atlas": {"tenant": ...}}``), else its ``api_key``'s. Behind the LiteLLM proxy a
client's word does not count: the tenant is the key the proxy authenticated (and its team),
or one an admin named, which the proxy's hooks grant (``proxy/tenants.py``).

Accounting, so that LiteLLM's own callbacks count each user call exactly once:

* the inner calls (probe, teacher, guided, baseline, judge) are made with LiteLLM's
  ``no-log`` flag, so success callbacks and cost tracking do not see them;
* the outer call's ``usage`` is the delivered answer's (what the user got);
* its ``response_cost`` is the report's cost: every inner call priced by its own model.
  When some part has no known price (a self-hosted teacher), the known parts are summed
  and the report's ``cost_usd`` stays ``None``.

Streams are ``Atlas``'s streams: live where nothing is compared before delivery (``off``,
``audit``, the student's own answer delivered alone), the student's tokens passed on as it
writes them; replayed once the decision is made under ``strict`` and ``verify``. The report
of a stream is ``report_of(stream)`` once the first chunk has arrived, and complete (the
streamed call's usage, the price LiteLLM logs) once the stream has ended. LiteLLM wraps
what a custom provider yields into its own chunk objects; what that path cannot carry (a
reasoning model's ``delta.reasoning_content``) is said in ``GenericWriter``.
"""

from __future__ import annotations

from ..attach import report_of
from .adapter import AtlasLLM
from .options import PROVIDER, RequestOptions
from .pricing import known_cost
from .registration import register
from .reports import ReportStore, find_report
from .streams import PendingStream

__all__ = [
    "PROVIDER", "AtlasLLM", "PendingStream", "RequestOptions", "ReportStore", "known_cost",
    "find_report", "register", "report_of",
]
