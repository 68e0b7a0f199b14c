"""Equivariant vector fields ``v(t, x, h)`` and layers usable on their own in any torch model."""
from .cueq import cueq_available
from .e3nn_conv import E3NNConv
from .e3nn_field import E3NNField
from .edges import dense_edges, radius_edges
from .egnn import EGNNField, EGNNLayer
from .embedding import ScaledField, TimeEmbedding
from .pairwise import PairwiseField, bond_hop_features
from .radial import BesselBasis, PolynomialCutoff, RadialEmbedding
