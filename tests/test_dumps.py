"""Seeding the vocabulary from a dump of registry records (``alerts vocabulary learn DUMP``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alerts import dumps, vocabulary
from alerts.cli import app as cli
from alerts.db import transaction
from alerts.runtime import Runtime
from tests.conftest import STUDIES, all_studies, study
from tests.support import nlm_truth


def test_every_dump_shape_yields_the_records(tmp_path: Path) -> None:
    records = [study(n) for n in ("NCT00124774", "NCT01339377", "NCT04948307")]
    (tmp_path / "folder").mkdir()
    for r in records[:2]:
        (tmp_path / "folder" / f"{nlm_truth.nct_id(r)}.json").write_text(json.dumps(r))
    (tmp_path / "folder" / "page.json").write_text(json.dumps({"studies": records[2:], "nextPageToken": "x"}))
    (tmp_path / "folder" / "notes.txt").write_text("not a dump file")
    lines = tmp_path / "studies.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in records) + "\n\n{broken\n" + json.dumps({"x": 1}) + "\n")

    from_folder = list(dumps.studies(tmp_path / "folder"))
    assert [nlm_truth.nct_id(i.record) for i in from_folder if i.record] == [
        "NCT00124774",
        "NCT01339377",
        "NCT04948307",
    ]
    from_lines = list(dumps.studies(lines))
    assert [i.record for i in from_lines[:3]] == records
    assert [(i.where.rsplit(":", 1)[1], i.problem is not None) for i in from_lines[3:]] == [("5", True), ("6", True)]
    assert [i.record for i in dumps.studies(tmp_path / "folder" / "page.json")] == records[2:]


@pytest.fixture
def run(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setattr("alerts.logs.configure_logging", lambda settings: None)
    return CliRunner()


def test_learning_a_dump_gives_a_new_deployment_the_vocabulary(
    runtime: Runtime, run: CliRunner, tmp_path: Path
) -> None:
    dump = tmp_path / "dump.jsonl"
    broken = {"protocolSection": {"identificationModule": {"nctId": "not-an-id"}}}
    dump.write_text("\n".join(json.dumps(r) for r in [*all_studies(), broken]) + "\n")
    result = run.invoke(cli, ["vocabulary", "learn", str(dump), "--batch", "50"])
    assert result.exit_code == 1, result.output  # one record skipped, and said so
    assert f"learned from {len(list(STUDIES.glob('NCT*.json')))} record(s), skipped 1" in result.output
    with transaction(runtime.engine) as session:
        assert {c.id for c in vocabulary.meaning(session, "Lumbar Disc Disease").concepts} == {
            "D007405",
            "D055959",
        }
        suggested = vocabulary.suggest(session, "opioid")
    assert suggested[0].name == "Opioid-Related Disorders"
    why = run.invoke(cli, ["vocabulary", "why", "Opioid-Use Disorder"], env={"COLUMNS": "300"})
    assert why.exit_code == 0 and "'opioid use disorder' means: D009293 Opioid-Related Disorders" in why.output
    assert "How its meaning changed" in why.output and "a record of NCT04817267" in why.output.replace("\n", " ")
    unknown = run.invoke(cli, ["vocabulary", "why", "Something Nobody Wrote"])
    assert "no record has used this phrase" in unknown.output
    # Learning it again changes nothing (each trial's contribution is replaced, not added).
    again = run.invoke(cli, ["vocabulary", "learn", str(STUDIES)])
    assert again.exit_code == 0 and "0 phrase meaning(s) changed" in again.output
