"""Materializers: Keras models as native ``.keras`` files, lesion crops as one ``.npz``, patch arrays as one
``.npy``; no pickles (a writer to the artifact store must not get code run in the steps that load them)."""

from __future__ import annotations

import inspect
import os
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from zenml.enums import ArtifactType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from liverlesion.crops import LesionCrops

if TYPE_CHECKING:
    import keras

MODEL_FILE = "model.keras"
CROPS_FILE = "crops.npz"
PATCHES_FILE = "patches.npy"


class KerasModelMaterializer(BaseMaterializer):
    """A network (a ``keras.Model``) as a native ``.keras`` file.

    Keras is imported when a network is saved or loaded, not when this class is defined: importing the pipelines
    loads neither Keras nor TensorFlow, so a step that takes or gives no network (ingest, segment, split,
    validate...) starts without them, in a step container too. Hence no type registration (ZenML's registers
    ``ASSOCIATED_TYPES`` when the class is defined): the steps name it for their network, and the type check
    is ``can_save_type``/``can_load_type``.
    """

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = ()  # keras.Model, checked below
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL
    SKIP_REGISTRATION: ClassVar[bool] = True

    @classmethod
    def can_save_type(cls, data_type: type[Any]) -> bool:
        import keras

        return inspect.isclass(data_type) and issubclass(data_type, keras.Model)

    @classmethod
    def can_load_type(cls, data_type: type[Any]) -> bool:
        import keras

        return inspect.isclass(data_type) and (issubclass(data_type, keras.Model) or issubclass(keras.Model, data_type))

    def load(self, data_type: type[Any]) -> keras.Model:
        import keras

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
        import keras

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
