"""ZenML's Kubeflow orchestrator, with GPU requests that reach the pod: the ``kubeflow_gpu`` flavour.

Why a flavour of our own: in ZenML 0.98 a step's ``ResourceSettings(gpu_count=...)`` becomes a KFP accelerator
only together with ``KubeflowOrchestratorSettings(node_selectors={"accelerator": ...})``, and that value never
gets through. The compiler drops ``node_selectors`` ("Ignoring invalid setting attributes ['node_selectors']":
it is not a field of the settings class) and the settings' validator then resets ``pod_settings`` to empty;
the orchestrator component refuses the key at registration ("Invalid configuration keys"). Measured with
``tests/test_kubeflow_compile.py``: the compiled pipeline asked for no GPU at all.

What this subclass adds to the compiled KFP pipeline:

- a step with ``ResourceSettings(gpu_count=n)``, n > 0, gets an accelerator of type ``gpu_resource`` and count n
  (the open-source KFP backend turns that into the container limit ``nvidia.com/gpu: n``), the node selector
  ``gpu_node_selector`` and the tolerations ``gpu_tolerations`` (kfp-kubernetes platform config: that step's pod
  only). ZenML 0.98's Kubeflow orchestrator drops pod volumes, node selectors and tolerations otherwise;
- every step mounts the persistent volume claims ``pvc_mounts`` (name -> path): the cohort, read by ``ingest``
  at the path given on the command line, must be at that same path in the pods (a shared volume mounted at the
  same place here and there), and a volume at ``JAX_COMPILATION_CACHE_DIR`` keeps XLA's programs between runs.

These are facts of the cluster: they live on the stack component, set at registration (``kubeflow.stack``),
not in the code. Everything else (compiling, uploading, schedules, the KFP client and its settings) is ZenML's
own, less a warning on every step that KFP 2 ignores an affinity nobody set (ZenML's settings validator always
adds an empty one). Registered as a custom flavour from this module (``zenml orchestrator flavor register
liverlesion_ops.kubeflow.gpu_orchestrator.KubeflowGpuOrchestratorFlavor``): the project is installed where the
client runs and in the step image, so both find it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field
from zenml.integrations.kubeflow.flavors.kubeflow_orchestrator_flavor import (
    KubeflowOrchestratorConfig,
    KubeflowOrchestratorFlavor,
)
from zenml.integrations.kubeflow.orchestrators.kubeflow_orchestrator import KubeflowOrchestrator

if TYPE_CHECKING:
    from kfp import dsl
    from zenml.config.base_settings import BaseSettings
    from zenml.config.resource_settings import ResourceSettings

FLAVOR = "kubeflow_gpu"


class KubeflowGpuOrchestratorConfig(KubeflowOrchestratorConfig):
    """ZenML's Kubeflow orchestrator configuration, plus where a step that asks for GPUs goes."""

    gpu_resource: str = Field(
        "nvidia.com/gpu",
        description="the Kubernetes extended resource a GPU step asks for (KFP accelerator type; the open-source "
        "KFP backend puts it in the container's limits): nvidia.com/gpu with NVIDIA's device plugin",
    )
    gpu_node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="node labels a GPU step's pod must match, e.g. {'nvidia.com/gpu.product': 'NVIDIA-H100-80GB-HBM3'} "
        "(GPU feature discovery) or {'cloud.google.com/gke-accelerator': 'nvidia-l4'} (GKE)",
    )
    gpu_tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="tolerations of a GPU step's pod (kfp.kubernetes.add_toleration arguments), e.g. "
        "[{'key': 'nvidia.com/gpu', 'operator': 'Exists', 'effect': 'NoSchedule'}] for tainted GPU nodes",
    )
    pvc_mounts: dict[str, str] = Field(
        default_factory=dict,
        description="persistent volume claims mounted in every step's pod, name -> mount path, e.g. "
        "{'liverlesion-data': '/data'} (the cohort, at the path it has where runs start)",
    )


class KubeflowGpuOrchestrator(KubeflowOrchestrator):
    """ZenML's Kubeflow orchestrator; a step's ``ResourceSettings(gpu_count=n)`` reaches its pod."""

    @property
    def config(self) -> KubeflowGpuOrchestratorConfig:
        return self._config  # type: ignore[return-value]

    def get_settings(self, container: Any) -> BaseSettings:
        settings = super().get_settings(container)
        pod = getattr(settings, "pod_settings", None)
        if pod is not None and not pod.model_dump(exclude_defaults=True):
            # ZenML's settings validator always makes pod settings with an empty affinity, then warns for every
            # step that KFP 2 ignores affinity: nothing was asked, nothing to warn about
            settings = settings.model_copy(update={"pod_settings": None})
        return settings

    def _configure_container_resources(
        self,
        dynamic_component: dsl.PipelineTask,
        resource_settings: ResourceSettings,
        node_selector_constraint: tuple[str, str] | None = None,
    ) -> dsl.PipelineTask:
        # ZenML's own CPU (and memory) limits; its GPU branch needs a node selector that ZenML 0.98 always drops
        task = super()._configure_container_resources(dynamic_component, resource_settings, None)
        from kfp import kubernetes

        for claim, path in self.config.pvc_mounts.items():  # every step
            task = kubernetes.mount_pvc(task, pvc_name=claim, mount_path=path)
        gpus = resource_settings.gpu_count or 0
        if gpus <= 0:
            return task
        task = task.set_accelerator_type(self.config.gpu_resource).set_accelerator_limit(gpus)
        for label, value in self.config.gpu_node_selector.items():
            task = kubernetes.add_node_selector(task, label_key=label, label_value=value)
        for toleration in self.config.gpu_tolerations:
            task = kubernetes.add_toleration(task, **toleration)
        return task


class KubeflowGpuOrchestratorFlavor(KubeflowOrchestratorFlavor):
    """The ``kubeflow_gpu`` orchestrator flavor: Kubeflow, with GPU requests that reach the pod."""

    @property
    def name(self) -> str:
        return FLAVOR

    @property
    def config_class(self) -> type[KubeflowGpuOrchestratorConfig]:
        return KubeflowGpuOrchestratorConfig

    @property
    def implementation_class(self) -> type[KubeflowGpuOrchestrator]:
        return KubeflowGpuOrchestrator
