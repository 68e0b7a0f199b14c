"""scripts/fault_check.py machinery on a fast subset of its faults (each fault also has its own test)."""
from eqflow.fault_check import FAULTS, format_fault_table, run_fault_checks


def test_fault_subset_passes_and_table_has_verdicts():
    results = run_fault_checks(["non-finite rows", "temporary file", "stale reply", "non-PDB"])
    assert len(results) == 4 and all(r.ok for r in results), format_fault_table(results)
    table = format_fault_table(results)
    assert table.splitlines()[0] == "| fault | expected | observed | verdict |"
    assert "4 of 4 faults handled as expected" in table


def test_a_failing_check_is_reported_not_raised(monkeypatch):
    def broken(tmp):
        raise RuntimeError("boom")

    monkeypatch.setattr("eqflow.fault_check.FAULTS", [("broken", "nothing", broken)] + FAULTS[:0])
    (r,) = run_fault_checks()
    assert not r.ok and r.verdict == "FAIL" and "RuntimeError: boom" in r.observed
