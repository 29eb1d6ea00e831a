"""Where steps run: what a pipeline asks of the stack it runs on (an image, a GPU), never of the profile.

On the local orchestrator (``make run``, the tests) nothing is added: runs are unchanged and quiet (ZenML's local
orchestrator would warn about resource settings it cannot honour). Where each step runs in its own container
(the Kubeflow stack, ``infra/kubeflow``):

- every step runs in the step image, ``infra/kubeflow/Dockerfile`` (``run_options``): ZenML builds it with the
  stack's image builder and pushes it to the stack's container registry; or, with ``LIVERLESION_STEP_IMAGE`` set
  (``REGISTRY/liverlesion-step:TAG``, built and pushed beforehand, e.g. by CI), or on the containers stack (its
  orchestrator names the image ``liverlesion stack image`` built), runs that image as it is, and nothing is built
  where the run starts. The image holds the code: nothing is uploaded or downloaded at run time;
- the ``train`` step asks for one GPU (``train_settings``); which resource, nodes and tolerations is the
  orchestrator's business, set on its stack component (``infra/kubeflow/gpu_orchestrator.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from liverlesion_ops.kubeflow.image import DOCKERFILE, DOCKERIGNORE

#: a pre-built step image to run every step in, instead of building ``DOCKERFILE``
STEP_IMAGE_ENV = "LIVERLESION_STEP_IMAGE"
#: the orchestrator flavours that run every step in this process, on this machine
IN_PROCESS_FLAVORS = ("local",)


def _orchestrator():
    from zenml.client import Client
    from zenml.enums import StackComponentType

    return Client().active_stack_model.components[StackComponentType.ORCHESTRATOR][0]


def runs_in_containers() -> bool:
    """Whether the active stack's orchestrator runs each step in a container of its own (not the local one)."""
    return _orchestrator().flavor_name not in IN_PROCESS_FLAVORS


def step_image() -> str | None:
    """The pre-built step image: ``$LIVERLESION_STEP_IMAGE``, else the one the active orchestrator runs every
    step in (the containers stack's ``run_args.image``); None: build it."""
    if image := os.environ.get(STEP_IMAGE_ENV):
        return image
    return (_orchestrator().configuration.get("run_args") or {}).get("image") or None


def train_settings() -> dict[str, Any]:
    """The ``train`` step's settings: one GPU where steps run in containers; none on the local orchestrator."""
    if not runs_in_containers():
        return {}
    from zenml.config import ResourceSettings

    return {"resources": ResourceSettings(gpu_count=1)}  # no memory: ZenML 0.98's KFP compile crashes on it


def docker_settings(root: Path, image: str | None = None):
    """The step image: ``image`` as it is (pre-built), else built from ``DOCKERFILE`` in the checkout ``root``."""
    from zenml.config import DockerSettings
    from zenml.config.docker_settings import DockerBuildConfig

    # the image holds the code and every requirement (the GPU lock): ZenML adds no layer, uploads no code
    code_in_image = {
        "allow_including_files_in_images": False,
        "allow_download_from_code_repository": False,
        "allow_download_from_artifact_store": False,
        "install_stack_requirements": False,
    }
    if image:
        return DockerSettings(parent_image=image, skip_build=True, **code_in_image)
    return DockerSettings(
        dockerfile=str(root / DOCKERFILE),
        build_context_root=str(root),
        parent_image_build_config=DockerBuildConfig(dockerignore=str(root / DOCKERIGNORE)),
        **code_in_image,
    )


def run_options() -> dict[str, Any]:
    """``Pipeline.with_options`` arguments for the active stack: the step image where steps run in containers."""
    if not runs_in_containers():
        return {}
    from liverlesion_ops import project

    return {"settings": {"docker": docker_settings(project.project_root(), step_image())}}
