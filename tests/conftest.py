import pytest
import torch


@pytest.fixture
def float64():
    """Run a test in float64 (exactness checks) and restore the default dtype afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def pytest_configure(config):
    # The tests use small tensors: one thread is faster than two and does not thrash when the
    # machine is shared (a CI run with two threads beside another job took 6x longer).
    torch.set_num_threads(1)
