"""eqflow: E(3)-equivariant continuous normalizing flows for Boltzmann sampling in Cartesian coordinates."""
__version__ = "0.1.0"
