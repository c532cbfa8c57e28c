"""An OpenAI client talking to atlas-middleware's LiteLLM proxy: change only base_url and key.

Against your own proxy (``atlas-middleware proxy --config config.yaml``):

    ATLAS_PROXY_URL=http://127.0.0.1:4000/v1 LITELLM_MASTER_KEY=sk-... \\
        python examples/proxy_client.py --model gpt-4o-mini

Without arguments it runs offline: a scripted OpenAI-compatible test server plays the
student, the teacher and the judge (the teacher, under ``strict``, compares the guided and
the baseline answer: here it prefers the concise one), and the real LiteLLM proxy is started
in front of it (this takes tens of seconds on a small machine: the proxy imports a lot).
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import ExitStack
from typing import Any

import openai

QUESTION = [{"role": "user", "content": "A shirt costs $20 and is 25% off. What do I pay?"}]


def show(title: str, headers: Any) -> None:
    atlas = {k: v for k, v in headers.items() if k.lower().startswith("x-atlas-")}
    print(f"\n== {title}")
    for name in ("x-atlas-decision", "x-atlas-reason", "x-atlas-tokens-saved", "x-atlas-net-tokens"):
        print(f"   {name}: {atlas.get(name, '-')}")


def demo(client: openai.OpenAI, model: str) -> None:
    # 1. A plain call: the answer, plus the report in headers and in an extra body field.
    raw = client.chat.completions.with_raw_response.create(model=model, messages=QUESTION)
    completion = raw.parse()
    show("plain call", raw.headers)
    print("   answer:", completion.choices[0].message.content)
    report = (completion.model_extra or {}).get("atlas") or {}
    print("   usage (the delivered answer's):", completion.usage.prompt_tokens, "+",
          completion.usage.completion_tokens, "tokens")
    print("   per-role tokens:", {role: u["prompt_tokens"] + u["completion_tokens"]
                                  for role, u in report.get("usage", {}).items() if u["calls"]})

    # 2. Streaming: the headers arrive first, then the chosen answer, then the usage chunk.
    with client.chat.completions.with_streaming_response.create(
        model=model, messages=QUESTION, stream=True, stream_options={"include_usage": True}
    ) as response:
        show("stream", response.headers)
        text, usage = "", None
        for chunk in response.parse():
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage is not None:
                usage = chunk.usage
    print("   streamed:", text, "| usage:", usage.completion_tokens if usage else None)

    # 3. Opt out for one call, by header (or metadata={"atlas": {"teach": False}}).
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=QUESTION, extra_headers={"x-atlas-teach": "false"})
    show("opted out", raw.headers)

    # 4. An agent's successive calls share one diagnosis.
    for step in (1, 2):
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=QUESTION, extra_headers={"x-atlas-session-id": "agent-1"})
        reused = (raw.parse().model_extra or {}).get("atlas", {}).get("guidance_reused")
        show(f"session step {step} (guidance reused: {reused})", raw.headers)


def concise_and_right(answer: str) -> bool:
    return "$15" in answer and "percent" not in answer


def offline(stack: ExitStack) -> tuple[str, str, str]:
    from atlas_middleware.testing import (
        GradingJudge,
        OpenAITestServer,
        PairwiseJudge,
        ScriptedBackend,
        teacher_reply,
    )
    from atlas_middleware.testing.proxy import ProxyProcess

    script = {
        "probe": "Percent discount: take 25% of 20 and subtract.",
        "teacher": teacher_reply("Compute the discount first, then subtract it from the price.", level=3),
        "guided": "25% of $20 is $5, so you pay $15.",
        "baseline": "The discount is 25 percent. 25 percent of 20 dollars is 5 dollars. "
                    "20 minus 5 is 15. You pay $15.",
        # The teacher's part as the judge: it reads the answers out of the judge's prompt and
        # calls right the one that gets $15 without spelling out every step.
        "judge_pair": PairwiseJudge(concise_and_right),
        "judge_score": GradingJudge(concise_and_right),
    }
    upstream = stack.enter_context(OpenAITestServer(ScriptedBackend(script)))
    print("starting the LiteLLM proxy (offline demo) ...", flush=True)
    proxy = stack.enter_context(ProxyProcess(
        student_url=upstream.url,
        atlas={"teacher": "openai/gpt-4o", "teacher_api_base": upstream.url, "ledger": "none"},
        env={"ATLAS_TEACHER_API_KEY": "sk-demo-teacher"},
    ))
    return proxy.url, proxy.master_key, "gpt-4o-mini"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=os.environ.get("ATLAS_PROXY_URL"))
    parser.add_argument("--api-key", default=os.environ.get("LITELLM_MASTER_KEY"))
    parser.add_argument("--model", default="gpt-4o-mini")
    args = parser.parse_args()
    started = time.perf_counter()
    with ExitStack() as stack:
        if args.base_url:
            base_url, key, model = args.base_url, args.api_key or "", args.model
        else:
            base_url, key, model = offline(stack)
        client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
        demo(client, model)
    print(f"\ndone in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
