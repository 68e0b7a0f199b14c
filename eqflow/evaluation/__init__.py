"""Metrics and diagnostic plots shared by every model."""
from .metrics import (log_weights, ess, self_normalized_weights, energy_w1, interatomic_distances,
                      distance_histogram_distance, nll)
from .plots import plot_training_curves, plot_energy_histograms, plot_distance_histograms
