"""The five models of the paper's Table 2, by key, in the paper's row order.

Each CNN is a backbone with the paper's head (``model.build_model``), with ImageNet weights (IPW)
or without (NPW); the baseline is an RBF SVM on texture features (``texture.TextureSVM``). Labels
are the paper's row names, so a report can put the paper's numbers beside ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ModelEntry:
    key: str
    label: str  # the row name of the paper's Table 2
    kind: Literal["cnn", "texture_svm"]
    backbone: str | None = None  # a key of model.BACKBONES
    pretrained: bool = False  # ImageNet weights (IPW) or random initialisation (NPW)


TABLE2_MODELS: dict[str, ModelEntry] = {
    entry.key: entry
    for entry in (
        ModelEntry("svm_texture", "SVM with texture features", "texture_svm"),
        ModelEntry("inception_resnet_v2_npw", "InceptionResNet-V2 (NPW)", "cnn", "inception_resnet_v2", False),
        ModelEntry("inception_resnet_v2_ipw", "InceptionResNet-V2 (IPW)", "cnn", "inception_resnet_v2", True),
        ModelEntry("inception_v3_npw", "Inception-V3 (NPW)", "cnn", "inception_v3", False),
        ModelEntry("inception_v3_ipw", "Proposed model (IPW)", "cnn", "inception_v3", True),
    )
}
#: The proposed model: InceptionV3 with ImageNet weights and the two FC-512 / Dropout-0.4 layers.
PROPOSED = "inception_v3_ipw"


def model_entry(key: str) -> ModelEntry:
    if key not in TABLE2_MODELS:
        raise ValueError(f"unknown model {key!r}; the models of Table 2 are {', '.join(TABLE2_MODELS)}")
    return TABLE2_MODELS[key]
