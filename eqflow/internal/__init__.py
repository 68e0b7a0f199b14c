"""Internal-coordinate (Z-matrix) transform and IC flows: the comparison baseline only."""
from .zmatrix import ZMatrix
from .measure import LOG_SO3_VOLUME, internal_to_v_log_density, log_det_v_to_internal
from .flow import ICFlow, SplineCoupling
