import numpy as np

from eqflow.evaluation import plot_distance_histograms, plot_energy_histograms, plot_training_curves


def test_plots_write_files(tmp_path):
    rng = np.random.default_rng(0)
    recs = [{"step": i, "loss": 10.0 / (i + 1)} for i in range(20)]
    recs += [{"step": 20, "loss": 0.4, "ess": 0.3}, {"step": 25, "loss": float("nan"), "ess": None}]
    assert plot_training_curves(recs, tmp_path / "a" / "curves.png").stat().st_size > 0
    # train.solve_check_every adds a third panel (a zero gap must not break the log scale)
    gaps = recs + [{"step": 10, "loss": 1.0, "solve_gap": 0.0, "solve_gap_max": 0.0},
                   {"step": 20, "loss": 0.5, "solve_gap": 0.3, "solve_gap_max": 2.0}]
    wide = plot_training_curves(gaps, tmp_path / "b.png")
    import matplotlib.image
    assert matplotlib.image.imread(wide).shape[1] > matplotlib.image.imread(tmp_path / "a" / "curves.png").shape[1]
    u = np.concatenate([rng.normal(size=500), [1e10, np.inf, np.nan]])
    lw = rng.normal(size=503)
    assert plot_energy_histograms(u, lw, rng.normal(size=500), tmp_path / "e.png").stat().st_size > 0
    x = rng.normal(size=(200, 4, 2))
    assert plot_distance_histograms(x, None, x, tmp_path / "d.png").stat().st_size > 0


def test_mode_diagnostics_plot(tmp_path):
    from eqflow.evaluation import plots
    recs = [{"step": i, "loss": 1.0, "time": 0.5 * i, "energy_evals": 64 * i} for i in range(1, 30)]
    for i in range(0, 29, 5):
        recs[i].update({"buffer_ess": 0.1 + 0.01 * i, "buffer_ess_raw": 0.05, "pop_raw/phi>0": 0.02,
                        "pop_raw/phi<0": 0.98, "pop_rw/phi>0": 0.03, "pop_rw/phi<0": 0.97})
    recs[5]["buffer_ess"] = float("nan")
    assert plots.plot_mode_diagnostics(recs, tmp_path / "m" / "modes.png").stat().st_size > 0
    # No mode keys (LJ): still written.
    assert plots.plot_mode_diagnostics([{"step": 1, "time": 1.0, "energy_evals": 10, "buffer_ess": 0.5}],
                                       tmp_path / "lj.png").stat().st_size > 0
