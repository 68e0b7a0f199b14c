"""Continuous flows (torchdiffeq) with exact or Hutchinson divergence."""
from .continuous import ADAPTIVE_SOLVERS, FIXED_STEP_SOLVERS, ContinuousFlow
from .divergence import (exact_divergence, exact_divergence_batched, exact_divergence_looped,
                         hutchinson_divergence, sample_noise)
from .dynamics import AugmentedDynamics
from .mixture import MixtureFlow
