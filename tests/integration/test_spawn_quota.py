"""Spawn quotas: an agent may have at most `max_sub_agents` live sub-agents,
the supervisor at most `max_agents` live agents in all. A real agent under
a real `capsup run` spawns past each; the refusal is `spawn_failed`, says
which setting, is recorded, and lifts once a sub-agent has exited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from runner import capsup_run, write_agent

SLEEPER = """
import os, sys, time
deadline = time.monotonic() + 60
while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
    time.sleep(0.02)
"""

SPAWNER = """
import json, sys
from capsup.agents import SpawnFailed, connect

root = "{root}"

def sleeper(client, n):
    return client.spawn([sys.executable, f"{{root}}/sleeper.py", f"{{root}}/go{{n}}"],
                        name="helper")

out = {{}}
with connect() as client:
    first, second = sleeper(client, 0), sleeper(client, 1)
    try:
        sleeper(client, 9)
        out["third"] = "started"
    except SpawnFailed as error:
        out["third"] = str(error)
    open(f"{{root}}/go0", "w").close()
    out["first_exit"] = client.wait(first.agent_id, timeout=30)
    again = sleeper(client, 2)
    out["again"] = again.agent_id
    for n in (1, 2):
        open(f"{{root}}/go{{n}}", "w").close()
    out["rest"] = [client.wait(s.agent_id, timeout=30) for s in (second, again)]
print(json.dumps(out))
"""


@pytest.mark.parametrize(
    ("setting", "named"),
    [("max_sub_agents = 2", "max_sub_agents"), ("max_agents = 3", "max_agents")],
)
def test_a_spawn_past_the_quota_is_refused_until_one_exits(
    tmp_path: Path, setting: str, named: str
) -> None:
    # max_agents = 3 counts the spawning agent itself: it and two sub-agents.
    write_agent(tmp_path, "sleeper", SLEEPER)
    agent = write_agent(tmp_path, "spawner", SPAWNER.format(root=tmp_path))
    out = capsup_run(tmp_path, agent, supervisor=setting)
    assert out.code == 0, out.stderr
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen["third"].startswith("spawn_failed: ") and f"[supervisor] {named}" in seen["third"]
    assert seen["first_exit"] == 0 and seen["rest"] == [0, 0]
    assert seen["again"].startswith("agent-helper-"), "the quota did not lift after an exit"
    refusals = [
        r
        for r in out.events("capability_denied")
        if r.get("operation") == "spawn" and r.get("reason") == "spawn_failed"
    ]
    assert len(refusals) == 1 and named in json.dumps(refusals[0])
    assert len(out.events("agent_started")) == 4  # main, the two sleepers, the one again


def test_the_quotas_are_settings_parsed_strictly(tmp_path: Path) -> None:
    from capsup.supervisor.config import ConfigError, parse_config

    settings = parse_config({"supervisor": {"max_sub_agents": 5, "max_agents": 9}}).settings
    assert (settings.max_sub_agents, settings.max_agents) == (5, 9)
    assert (parse_config({}).settings.max_sub_agents, parse_config({}).settings.max_agents) == (
        64,
        1024,
    )
    for bad in (0, -1, 2.5, "8", True):
        for key in ("max_sub_agents", "max_agents"):
            with pytest.raises(ConfigError, match=f"supervisor.{key}: must be a positive number"):
                parse_config({"supervisor": {key: bad}})
