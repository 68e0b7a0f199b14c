"""Metrics and diagnostic plots shared by every model."""
from .metrics import (log_weights, ess, ess_split, pareto_k, max_weight, self_normalized_weights, energy_w1, interatomic_distances,
                      distance_histogram_distance, nll)
from .plots import plot_training_curves, plot_energy_histograms, plot_distance_histograms
# Molecular analysis (mdtraj/matplotlib imported on use).
from .ramachandran import phi_psi, mode_populations, delta_f, ramachandran_kl, plot_ramachandran
from .chirality import fold_to_l, d_fraction, l_sign
from .trajectory import load_md_reference, export_samples
# Mode labels (the generic label -> population helper is eqflow.evaluation.modes.mode_populations;
# the name above is the Ramachandran one with bootstrap errors).
from .modes import (alanine_mode_populations, basin_labels, contact_graph_labels, decode_contact_label,
                    dw4_mode_labels)
