"""Equivariant vector fields ``v(t, x, h)`` usable on their own in any torch model."""
from .e3nn_field import E3NNConvLayer, E3NNField
from .egnn import EGNNField, EGNNLayer
from .embedding import ScaledField, TimeEmbedding
