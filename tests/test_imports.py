"""Import hygiene: light modules stay light, reference data imports one way."""
import subprocess
import sys

import pytest

HEAVY = ("yaml", "openmm", "matplotlib")


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("module", ["eqflow.nn", "eqflow.geometry", "eqflow"])
def test_light_imports(module):
    loaded = _modules_after(f"import {module}")
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert not heavy, f"import {module} loads {heavy[:5]}"


def test_reference_data_does_not_import_evaluation():
    loaded = _modules_after("import eqflow.distributions.reference")
    assert "eqflow.evaluation" not in loaded and "eqflow.evaluation.trajectory" not in loaded


def test_lazy_generator_attribute():
    import eqflow
    from eqflow.generator import Generator, load_checkpoint

    assert eqflow.Generator is Generator and eqflow.load_checkpoint is load_checkpoint
    with pytest.raises(AttributeError, match="no_such_name"):
        eqflow.no_such_name
