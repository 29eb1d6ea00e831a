"""Liver lesion classification (colorectal metastasis vs benign cyst) from CT.

The domain package: pure logic only. It imports neither ZenML nor MLflow, so it can be unit-tested
fast and run alone on a machine that has only Keras (see ``../shared/DESIGN.md``, "Layers").
"""

__version__ = "0.1.0"
