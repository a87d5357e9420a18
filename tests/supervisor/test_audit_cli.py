"""``capsup audit verify|tail|query`` run as the real installed command."""

from __future__ import annotations

import itertools
import json
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path

import pytest
from capsup.supervisor.audit import AuditHead, AuditLog, format_head
from capsup.supervisor.audit_cli import _Follower
from capsup.supervisor.events import Event, EventType

CAPSUP = str(Path(sys.executable).with_name("capsup"))
E = EventType


def capsup(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CAPSUP, "audit", *map(str, args)], capture_output=True, text=True, timeout=30
    )


def write(path: Path, count: int, *, start: int = 1, max_bytes: int = 1 << 30) -> AuditHead:
    """``count`` events: agent-N requests cap-N, is granted it, validates it."""
    with AuditLog(path, max_bytes=max_bytes) as log:
        for n in range(start, start + count):
            trace = f"trace-{n}"
            agent = f"agent-{n % 2}"
            t = 1_800_000_000.0 + n
            log(Event(E.CAPABILITY_REQUESTED, t, trace, agent, 100 + n, resource="file:///d"))
            log(
                Event(
                    E.CAPABILITY_GRANTED,
                    t,
                    trace,
                    agent,
                    100 + n,
                    f"cap-{n}",
                    resource="file:///d",
                    operation="read",
                    decision="allow",
                    detail={"holder": agent},
                )
            )
            log(Event(E.CAPABILITY_VALIDATED, t, trace, agent, 100 + n, f"cap-{n}"))
        return log.head


@pytest.fixture
def trail(tmp_path: Path) -> tuple[Path, AuditHead]:
    path = tmp_path / "audit.jsonl"
    return path, write(path, 4)


def test_verify_an_intact_trail_exits_0(trail: tuple[Path, AuditHead]) -> None:
    path, head = trail
    done = capsup("verify", path, "--head", format_head(head))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: 12 records intact, seq 1..12")


def test_verify_a_broken_trail_exits_1_naming_the_seq(trail: tuple[Path, AuditHead]) -> None:
    path, _ = trail
    lines = path.read_text().splitlines(keepends=True)
    del lines[4]
    path.write_text("".join(lines))
    done = capsup("verify", path)
    assert done.returncode == 1
    assert done.stdout.count("\n") == 1
    assert done.stdout.startswith("broken at seq 5: deleted:")


def test_verify_a_cut_tail_against_the_head_exits_1(trail: tuple[Path, AuditHead]) -> None:
    path, head = trail
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-2]))
    assert capsup("verify", path).returncode == 0
    done = capsup("verify", path, "--head", format_head(head))
    assert done.returncode == 1
    assert "seq 11: truncated" in done.stdout


def test_verify_follows_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    head = write(path, 10, max_bytes=2000)
    assert (tmp_path / "audit.jsonl.2").exists()
    done = capsup("verify", path, "--head", format_head(head))  # rotated files come along
    assert done.returncode == 0, done.stdout
    assert "30 records" in done.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("verify", "{tmp}/missing.jsonl"),
        ("verify", "{tmp}/audit.jsonl", "--head", "7"),
        ("verify", "{tmp}/audit.jsonl", "--store", "{tmp}/missing.db"),
        ("verify", "{tmp}/audit.jsonl", "--store", "{tmp}/audit.jsonl"),
        ("tail", "{tmp}/missing.jsonl"),
        ("query", "{tmp}/missing.jsonl"),
        ("query", "{tmp}/audit.jsonl", "--event", "capability_stolen"),
        ("verify", "{tmp}/nothing*"),
        (),
    ],
)
def test_user_mistakes_exit_2_with_one_line(
    trail: tuple[Path, AuditHead], tmp_path: Path, args: tuple[str, ...]
) -> None:
    done = capsup(*(a.format(tmp=tmp_path) for a in args))
    assert done.returncode == 2
    assert done.stderr.startswith("capsup: audit")
    assert done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


def test_tail_prints_the_last_records_readably(trail: tuple[Path, AuditHead]) -> None:
    path, _ = trail
    done = capsup("tail", path, "-n", "2")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    assert "#11 capability_granted principal=agent-0 pid=104 cap=cap-4" in lines[0]
    assert lines[0].startswith("2027-01-15T08:00:04.000Z")
    assert "allow" in lines[0] and "trace=trace-4" in lines[0]
    as_json = capsup("tail", path, "-n", "1", "--json").stdout.splitlines()
    assert json.loads(as_json[0])["seq"] == 12


def test_tail_reaches_into_rotated_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 10, max_bytes=2000)
    live = len(path.read_text().splitlines())
    done = capsup("tail", path, "-n", str(live + 3))
    seqs = [int(line.split()[1][1:]) for line in done.stdout.splitlines()]
    assert seqs == list(range(30 - live - 2, 31))


def test_tail_follow_prints_new_records_across_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 1)
    proc = subprocess.Popen(
        [CAPSUP, "audit", "tail", str(path), "-n", "1", "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert "#3 " in read_lines(proc, 1)[0]
        write(path, 8, start=2, max_bytes=1500)  # rotates while followed
        assert (tmp_path / "audit.jsonl.1").exists()
        seqs = [int(line.split()[1][1:]) for line in read_lines(proc, 24)]
        assert seqs == list(range(4, 28))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def read_lines(proc: subprocess.Popen[bytes], count: int, timeout: float = 15.0) -> list[str]:
    """Exactly ``count`` lines from ``proc``'s stdout, or fail after ``timeout``."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while data.count(b"\n") < count:
            left = deadline - time.monotonic()
            assert left > 0, f"only got {data!r}"
            if selector.select(left):
                chunk = os.read(fd, 65536)
                assert chunk, f"follow ended early; got {data!r}"
                data += chunk
    lines = data.decode().splitlines()
    assert len(lines) == count, lines
    return lines


def test_query_filters_by_agent_capability_event_and_trace(trail: tuple[Path, AuditHead]) -> None:
    path, _ = trail
    by_agent = capsup("query", path, "--agent", "agent-1").stdout.splitlines()
    assert len(by_agent) == 6 and all("principal=agent-1" in line for line in by_agent)
    by_cap = capsup("query", path, "--capability", "cap-3").stdout.splitlines()
    assert [line.split()[2] for line in by_cap] == ["capability_granted", "capability_validated"]
    by_event = capsup("query", path, "--event", "capability_granted", "--json")
    records = [json.loads(line) for line in by_event.stdout.splitlines()]
    assert [r["capability_id"] for r in records] == ["cap-1", "cap-2", "cap-3", "cap-4"]
    by_trace = capsup("query", path, "--trace", "trace-2", "--agent", "agent-0").stdout
    assert [line.split()[1] for line in by_trace.splitlines()] == ["#4", "#5", "#6"]
    nothing = capsup("query", path, "--trace", "trace-99")
    assert (nothing.returncode, nothing.stdout) == (1, "")


def test_query_skips_garbage_with_a_warning_and_escapes_hostile_values(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log(Event(E.CAPABILITY_DENIED, 1.0, "t", "agent-1", resource="file:///\x1b[2Jevil me"))
    with path.open("a") as stream:
        stream.write("not a record\n")
    done = capsup("query", path)
    assert done.returncode == 0
    assert '"file:///\\u001b[2Jevil me"' in done.stdout
    assert "\x1b" not in done.stdout
    assert "audit.jsonl:2: not an audit record" in done.stderr


def test_following_picks_up_what_was_written_after_the_tail_was_printed(tmp_path: Path) -> None:
    """The race between printing the tail and starting to follow, in-process:
    records written in between (even into files rotated away) still come."""
    path = tmp_path / "audit.jsonl"
    write(path, 1)  # seq 1..3; pretend the tail showed up to seq 2
    write(path, 8, start=2, max_bytes=1500)  # seq 4..27, rotating on the way
    follower = _Follower(path, shown=2)
    got = [json.loads(line)["seq"] for line in itertools.islice(follower.lines(), 25)]
    assert got == list(range(3, 28))
    follower.stream.close()


def test_following_reads_a_line_that_was_half_written_when_it_started(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 1)
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"half":')  # a writer caught mid-line
    follower = _Follower(path, shown=3)
    lines = follower.lines(interval=0.01)
    path.write_bytes(whole + b'{"half":1}\n')
    assert next(lines) == b'{"half":1}'
    lines.close()
