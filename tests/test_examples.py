"""Every example runs offline, as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", HF_HUB_OFFLINE="1", XDG_DATA_HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.strip(), "an example should show its result"
    # A newcomer's first run shows the mechanism working: every judged step judged.
    assert "judge_error" not in proc.stdout, proc.stdout[-3000:]
    if path.name in JUDGED:
        assert JUDGED[path.name] in proc.stdout, proc.stdout[-3000:]


JUDGED = {
    # The judge (the example's teacher double) preferred the concise guided answer.
    "langchain_agent.py": "guided (judge_preferred_guided)",
    "proxy_client.py": "x-atlas-reason: judge_preferred_guided",
}


def test_the_langchain_example_judges_every_step(capsys: pytest.CaptureFixture[str]) -> None:
    """In process (fast, not ``slow``): the agent example's judged step is judged, not an error."""
    import runpy

    pytest.importorskip("langchain")
    runpy.run_path(str(Path(__file__).parent.parent / "examples" / "langchain_agent.py"), run_name="__main__")
    steps = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert len(steps) == 3
    assert not any("judge_error" in line for line in steps), steps
    assert "guided (judge_preferred_guided)" in steps[-1]
