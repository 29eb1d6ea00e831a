"""Liver lesion classification (colorectal metastasis vs benign cyst) from CT.

The domain package: pure logic only. It imports neither ZenML nor MLflow, so it can be unit-tested
fast and run alone on a machine that has only Keras (see ``../shared/DESIGN.md``, "Layers").
"""

__version__ = "0.1.0"

#: Lesion class codes, shared by the reference masks, the lesion table and the model output.
#: In masks 0 is background; the model's positive class is metastasis.
MASK_CYST = 1
MASK_METASTASIS = 2
LABEL_CYST = 0
LABEL_METASTASIS = 1
LABEL_NAMES = {LABEL_CYST: "cyst", LABEL_METASTASIS: "metastasis"}
