import numpy as np

from eqflow.evaluation import plot_distance_histograms, plot_energy_histograms, plot_training_curves


def test_plots_write_files(tmp_path):
    rng = np.random.default_rng(0)
    recs = [{"step": i, "loss": 10.0 / (i + 1)} for i in range(20)]
    recs += [{"step": 20, "loss": 0.4, "ess": 0.3}, {"step": 25, "loss": float("nan"), "ess": None}]
    assert plot_training_curves(recs, tmp_path / "a" / "curves.png").stat().st_size > 0
    u = np.concatenate([rng.normal(size=500), [1e10, np.inf, np.nan]])
    lw = rng.normal(size=503)
    assert plot_energy_histograms(u, lw, rng.normal(size=500), tmp_path / "e.png").stat().st_size > 0
    x = rng.normal(size=(200, 4, 2))
    assert plot_distance_histograms(x, None, x, tmp_path / "d.png").stat().st_size > 0
