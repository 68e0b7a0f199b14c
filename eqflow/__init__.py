"""eqflow: E(3)-equivariant continuous normalizing flows for Boltzmann sampling in Cartesian coordinates."""
from . import geometry
from .distributions import CoMFreeGaussian, MixtureBase
from .flows import ContinuousFlow, MixtureFlow, exact_divergence, hutchinson_divergence
from .nn import E3NNField, EGNNField

__version__ = "0.1.0"
__all__ = ["geometry", "CoMFreeGaussian", "MixtureBase", "ContinuousFlow", "MixtureFlow",
           "exact_divergence", "hutchinson_divergence", "EGNNField", "E3NNField", "Generator", "load_checkpoint"]


def __getattr__(name):
    # Generator pulls in the config (YAML) and every target; loaded on first use so that importing
    # eqflow or a light part of it (eqflow.nn, eqflow.geometry) stays light.
    if name in ("Generator", "load_checkpoint"):
        from . import generator
        return getattr(generator, name)
    raise AttributeError(f"module 'eqflow' has no attribute {name!r}")
