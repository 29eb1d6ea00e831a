"""A Keras materializer: models are stored as native ``.keras`` files, not pickles."""

from __future__ import annotations

import os
from typing import Any, ClassVar

import keras
from zenml.enums import ArtifactType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

MODEL_FILE = "model.keras"


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
