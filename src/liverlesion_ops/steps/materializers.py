"""Materializers: Keras models as native ``.keras`` files, lesion crops as one ``.npz``, patch arrays as one
``.npy``; no pickles (a writer to the artifact store must not get code run in the steps that load them)."""

from __future__ import annotations

import os
from typing import Any, ClassVar

import keras
import numpy as np
from zenml.enums import ArtifactType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from liverlesion.crops import LesionCrops

MODEL_FILE = "model.keras"
CROPS_FILE = "crops.npz"
PATCHES_FILE = "patches.npy"


class KerasModelMaterializer(BaseMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (keras.Model,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL

    def load(self, data_type: type[Any]) -> keras.Model:
        with self.get_temporary_directory(delete_at_exit=True) as tmp:
            local = os.path.join(tmp, MODEL_FILE)
            fileio.copy(os.path.join(self.uri, MODEL_FILE), local)
            return keras.saving.load_model(local, compile=False)

    def save(self, data: keras.Model) -> None:
        with self.get_temporary_directory(delete_at_exit=True) as tmp:
            local = os.path.join(tmp, MODEL_FILE)
            data.save(local)
            fileio.copy(local, os.path.join(self.uri, MODEL_FILE), overwrite=True)

    def extract_metadata(self, data: keras.Model) -> dict[str, Any]:
        return {
            "parameters": int(data.count_params()),
            "input_shape": str(tuple(data.input_shape)),
            "keras_version": keras.__version__,
            "backend": keras.backend.backend(),
        }


class LesionCropsMaterializer(BaseMaterializer):
    """The per-lesion crops as flat arrays and a JSON index in one uncompressed ``.npz`` (fast to write and read)."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (LesionCrops,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA

    def load(self, data_type: type[Any]) -> LesionCrops:
        with fileio.open(os.path.join(self.uri, CROPS_FILE), "rb") as handle, np.load(handle) as arrays:
            return LesionCrops.from_arrays({name: arrays[name] for name in arrays.files})

    def save(self, data: LesionCrops) -> None:
        with fileio.open(os.path.join(self.uri, CROPS_FILE), "wb") as handle:
            np.savez(handle, **data.to_arrays())

    def extract_metadata(self, data: LesionCrops) -> dict[str, Any]:
        return {"lesions": len(data), "margin_mm": data.margin_mm, "megabytes": round(data.nbytes / 1e6, 1)}


class PatchArrayMaterializer(BaseMaterializer):
    """A numeric array (the patch stacks) as one ``.npy``, loaded with ``allow_pickle=False``: ZenML's own numpy
    materializer loads with pickles allowed, so a doctored artifact would run code in ``train``, which holds the
    MLflow credentials. An object array is refused on save and on load."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (np.ndarray,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA

    def load(self, data_type: type[Any]) -> np.ndarray:
        with fileio.open(os.path.join(self.uri, PATCHES_FILE), "rb") as handle:
            return np.load(handle, allow_pickle=False)

    def save(self, data: np.ndarray) -> None:
        with fileio.open(os.path.join(self.uri, PATCHES_FILE), "wb") as handle:
            np.save(handle, np.asarray(data), allow_pickle=False)

    def extract_metadata(self, data: np.ndarray) -> dict[str, Any]:
        return {"shape": str(tuple(data.shape)), "dtype": str(data.dtype), "megabytes": round(data.nbytes / 1e6, 1)}
