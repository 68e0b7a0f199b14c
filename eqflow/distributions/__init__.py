"""Base distributions on the CoM-free subspace and reference-data loaders."""
from .gaussian import CoMFreeGaussian, com_free_gaussian_log_prob
from .harmonic import HarmonicBase, graph_laplacian
from .mixture import MixtureBase
from .reference import (ReferenceData, load_reference, load_md_reference, save_reference, split_reference,
                        ensure_particle_reference)
