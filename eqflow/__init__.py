"""eqflow: E(3)-equivariant continuous normalizing flows for Boltzmann sampling in Cartesian coordinates."""
from . import geometry
from .distributions import CoMFreeGaussian, MixtureBase
from .flows import ContinuousFlow, MixtureFlow, exact_divergence, hutchinson_divergence
from .nn import E3NNField, EGNNField
from .generator import Generator, load_checkpoint

__version__ = "0.1.0"
__all__ = ["geometry", "CoMFreeGaussian", "MixtureBase", "ContinuousFlow", "MixtureFlow",
           "exact_divergence", "hutchinson_divergence", "EGNNField", "E3NNField", "Generator", "load_checkpoint"]
