from eqflow.benchmark_fields import FieldCase, format_field_table, run_field_case


def test_field_cases_measure_and_tabulate():
    rows = [run_field_case(FieldCase(kind, "tiny", 5, 3, 2, batch=2, reps=1,
                                     e3nn=dict(n_layers=1, hidden_irreps="8x0e + 2x1o")))
            for kind in ("egnn", "e3nn")]
    for r in rows:
        assert r["params"] > 0 and r["forward_ms"] > 0 and r["full_ms"] > 0 and r["peak_mb"] >= 0
    rows.append(dict(field="e3nn", system="flat", n_atoms=4, dim=2, batch=2, na="e3nn fields are 3D only"))
    table = format_field_table(rows)
    assert "tiny 5x3" in table and "1.00x" in table and "n/a" in table and "3D only" in table
