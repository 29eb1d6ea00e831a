"""The layering: the domain package imports neither ZenML, MLflow nor DVC (they are orchestration)."""

import subprocess
import sys

SCRIPT = """
import importlib, pkgutil, sys
import liverlesion
for module in pkgutil.iter_modules(liverlesion.__path__):
    importlib.import_module(f"liverlesion.{module.name}")
print(sorted({name.split(".")[0] for name in sys.modules} & {"zenml", "mlflow", "dvc", "great_expectations"}))
"""


def test_the_domain_package_imports_no_orchestration():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=300)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
