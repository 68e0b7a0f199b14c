from eqflow.benchmark import DivergenceCase, _label, format_table, run_case


def test_divergence_cases_measure_and_tabulate():
    rows = [run_case(DivergenceCase(4, 2, 3, div, "sample", n_steps=1, hidden=8, n_layers=1, exact_method=m))
            for div, m in (("exact", "loop"), ("exact", "batched"), ("hutchinson", "loop"))]
    rows.append(run_case(DivergenceCase(4, 2, 3, "exact", "revkl", n_steps=1, hidden=8, field="pairwise")))
    rows.append(run_case(DivergenceCase(4, 2, 3, "exact", "sample", n_steps=1, hidden=8, field="pairwise", n_env=2)))
    assert [r["mode"] for r in rows] == ["exact-loop", "exact-batched", "hutchinson", "exact-closed",
                                         "exact-closed-env2"]
    assert all(r["finite"] and r["wall_s"] > 0 for r in rows)
    rows.append(dict(rows[0], batch=5, mode="exact-batched", error="timeout after 1 s"))
    table = format_table(rows)
    assert "loop/exact-batched" in table and "loop/hutchinson" in table and "x " in table
    assert "note: 4x2 b5 sample exact-batched: timeout after 1 s" in table


def test_only_divergence_cases_get_a_mode_label():
    assert _label(DivergenceCase(4, 2, 3, "exact", "sample", exact_method="batched", compile=True)) == {
        "mode": "exact-batched+compile"}
    assert _label(object()) == {}  # e.g. bench_fields' cases through run_isolated
