"""Scripted server scenarios (trickles_kit/scenarios/*.txt) and the runner that plays them."""

import subprocess
import sys
from pathlib import Path

import pytest

from trickles_kit.testing.scenario import (
    CONT_FIELDS,
    main,
    parse_scenario,
    run_scenario,
    scenario_paths,
)
from trickles_kit.wire.continuation import FULL1, Continuation, decode_continuation

ROOT = Path(__file__).resolve().parents[2]
PATHS = scenario_paths()

HANDSHAKE = """\
config initial_cwnd=3
0.000 > syn app="GEN 100000 7"
< pkt=0 flags=SA
+0.020 > ack=0 sack=0-0 range=0:1448,1448:2896,2896:4344
< pkt=1 kind=initial data=0:1448 ; pkt=2 kind=initial ; pkt=3 kind=initial
"""


@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
def test_scenario_passes(path: Path) -> None:
    result = run_scenario(path.read_text(encoding="utf-8"), path.name)
    assert result.passed, result.report()


def test_the_required_scenarios_are_shipped() -> None:
    names = {p.stem for p in PATHS}
    assert len(names) >= 10
    assert {"handshake", "split", "terminate", "recovery", "timeout", "tamper", "replay",
            "nonce_lie", "fin", "syn_data"} <= names


def test_a_correct_script_passes() -> None:
    result = run_scenario(HANDSHAKE, "ok")
    assert result.passed, result.report()
    assert len(result.checks) == 4
    assert result.report().startswith("PASS ok")


def test_a_wrong_expectation_fails_with_line_expected_and_got() -> None:
    script = HANDSHAKE + "+0.020 > ack=1 sack=0-1\n< pkt=4 kind=split cwnd=9\n"
    result = run_scenario(script, "wrong")
    assert not result.passed
    (fail,) = result.failures
    assert fail.line == 7
    report = result.report()
    assert report.startswith("FAIL wrong")
    assert "wrong:7:" in report
    assert "kind: expected split, got continue" in report
    assert "cwnd: expected 9, got 3" in report
    assert "expected: pkt=4 kind=split cwnd=9" in report
    assert "got:      pkt=4 ack=1" in report


def test_the_run_stops_at_the_first_failure() -> None:
    script = HANDSHAKE.replace("< pkt=0 flags=SA", "< pkt=0 flags=A")
    result = run_scenario(script, "stop")
    assert [c.line for c in result.checks] == [3]
    assert "flags: expected A, got SA" in result.failures[0].detail


def test_unmatched_packets_are_a_failure() -> None:
    script = HANDSHAKE.replace(" ; pkt=3 kind=initial", "")
    result = run_scenario(script, "extra")
    assert not result.passed
    (fail,) = result.failures
    assert fail.line == 4  # the request that produced the packet
    assert "1 unexpected packet(s)" in fail.detail
    assert "got: pkt=3" in fail.detail


def test_expecting_nothing_when_the_server_answers_fails() -> None:
    result = run_scenario('> syn app="GEN 10 1"\n< none\n', "none")
    assert not result.passed
    assert "expected no (more) packets" in result.failures[0].detail


def test_expecting_a_packet_that_never_comes_fails() -> None:
    script = HANDSHAKE + "< pkt=4\n"
    result = run_scenario(script, "missing")
    assert not result.passed
    assert result.failures[0].line == 6
    assert "produced no more packets" in result.failures[0].detail


def test_event_expectations_can_fail() -> None:
    script = HANDSHAKE + "! nonce_fail\n! -nonce_ok\n"
    result = run_scenario(script, "events")
    assert not result.passed
    assert "expected event nonce_fail, got: nonce_ok" in result.failures[0].detail
    script = HANDSHAKE + "! nonce_ok\n! -nonce_ok\n"
    result = run_scenario(script, "events")
    assert [c.line for c in result.failures] == [7]


def test_event_field_mismatch_is_reported() -> None:
    script = HANDSHAKE + "+0.02 > ack=1 sack=0-1 tamper=mac\n< none\n! mac_fail reason=stale\n"
    result = run_scenario(script, "fields")
    assert not result.passed
    assert "reason: expected stale, got mac" in result.failures[0].detail


def test_minimal_continuation_fields_are_not_on_the_wire() -> None:
    script = """\
> syn app="GEN 100000 7"
< pkt=0
> ack=0 sack=0-0
< pkt=1 ; pkt=2 lost ; pkt=3
> ack=3 sack=0-1,3-3
< pkt=2 type=MINIMAL state=RECOVERY ; pkt=5
"""
    result = run_scenario(script, "minimal")
    assert not result.passed
    assert "not carried by a MINIMAL continuation" in result.failures[0].detail


def test_honest_sacks_only_claim_received_packets() -> None:
    script = HANDSHAKE.replace("; pkt=2 kind=initial", "; pkt=2 kind=initial lost")
    result = run_scenario(script + "> ack=3 sack=0-3\n< none\n", "honest")
    assert not result.passed
    assert "claims packet 2, which the client never received" in result.failures[0].detail
    result = run_scenario(script + "> ack=3 sack=0-3 lie\n< none\n! nonce_fail\n", "lie")
    assert result.passed, result.report()


def test_script_errors_are_failures_with_the_line_number() -> None:
    result = run_scenario(HANDSHAKE + "> ack=42 sack=0-0\n", "unknown")
    assert not result.passed
    assert result.failures[0].line == 6
    assert "no FULL continuation of packet 42" in result.failures[0].detail
    result = run_scenario("> replay\n", "replay")
    assert "no request was sent before" in result.failures[0].detail


@pytest.mark.parametrize("line", [
    "> ack=1 bogus=3",
    "> syn ack=1",
    "< pkt=1 colour=red",
    "! no_such_event",
    "+0.5 < pkt=1",
    "sleep 3",
    "config no_such_field=1",
    "< pkt=1 ; ; pkt=2",
    "> ack=1 lie=yes",
])
def test_syntax_errors_name_the_line(line: str) -> None:
    with pytest.raises(Exception, match="line 2"):
        parse_scenario("# comment\n" + line + "\n")
    result = run_scenario("# comment\n" + line + "\n", "syntax")
    assert not result.passed
    assert result.failures[0].line == 2


def test_an_empty_script_does_not_pass() -> None:
    result = run_scenario("# nothing\n", "empty")
    assert not result.passed
    assert "checks nothing" in result.report()


def test_runs_are_deterministic() -> None:
    path = next(p for p in PATHS if p.name == "recovery.txt")
    text = path.read_text(encoding="utf-8")
    assert run_scenario(text).trace == run_scenario(text).trace


@pytest.mark.parametrize("name", sorted(CONT_FIELDS))
def test_tamper_table_matches_the_wire_layout(name: str) -> None:
    cont = Continuation(FULL1, 5, 1, 2, 3, 4, 6, 7, 1, 8, 9, 10, 11, 12, 13, 14, b"m" * 16)
    raw = bytearray(cont.encode())
    off, n = CONT_FIELDS[name]
    raw[off + (0 if name == "mac" else n - 1)] ^= 1
    if name == "type":  # FULL1 ^ 1 is MINIMAL: a different layout altogether
        assert raw[0] == 0
        return
    got, _ = decode_continuation(bytes(raw))
    changed = [f for f in Continuation.__slots__ if getattr(got, f) != getattr(cont, f)]
    assert changed == [name]


def test_cli_prints_pass_and_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.txt"
    good.write_text(HANDSHAKE)
    bad = tmp_path / "bad.txt"
    bad.write_text(HANDSHAKE.replace("pkt=0 flags=SA", "pkt=1 flags=SA"))
    assert main([str(good)]) == 0
    assert main([str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "PASS good.txt" in out
    assert "FAIL bad.txt" in out
    assert "bad.txt:3:" in out


def test_module_entry_point(tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text(HANDSHAKE)
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-m", "trickles_kit.testing.scenario", str(good)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("PASS good.txt")
