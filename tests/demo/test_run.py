"""`alerts demo`: the emails come from what the registry watcher found in the stand-in."""

from __future__ import annotations

from email import policy
from email.parser import BytesParser
from pathlib import Path

from alerts.demo.run import CONDITION_FOLLOWER, TRIAL_FOLLOWER, run_demo


def test_demo_emails_come_from_the_watcher(tmp_path: Path) -> None:
    said: list[str] = []
    files = run_demo(tmp_path / "demo", tmp_path / "outbox", say=said.append)
    messages = [BytesParser(policy=policy.default).parse(p.open("rb")) for p in files]
    alerts = [(m["To"], m["Subject"]) for m in messages if not str(m["Message-ID"]).strip().startswith("<confirm-")]
    assert len(alerts) == 2
    assert {to for to, _ in alerts} == {TRIAL_FOLLOWER, CONDITION_FOLLOWER}
    assert any(to == CONDITION_FOLLOWER and subject.startswith("New trial") for to, subject in alerts)
    text = "\n".join(said)
    assert "bootstrap, sends nothing): finished, 0 record(s) read, published nothing" in text
    assert "published {'trial.new_for_condition': 1}" in text and "published {'trial.changed': 1}" in text
    assert "re-read): finished, 1 record(s) read, published nothing" in text
