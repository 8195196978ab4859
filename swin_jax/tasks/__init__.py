"""Tasks: what differs per kind of training (see ``swin_jax.tasks.base``).

    task = get_task(config)        # config.task.name -> a Task instance
"""

from __future__ import annotations

from swin_jax.tasks.base import Evaluator, SumEvaluator, Task
from swin_jax.tasks.classification import ClassificationTask
from swin_jax.tasks.detection import DetectionTask
from swin_jax.tasks.segmentation import SegmentationTask
from swin_jax.tasks.simmim import SimMIMTask
from swin_jax.tasks.soft_teacher import SoftTeacherTask
from swin_jax.tasks.volume_segmentation import VolumeSegmentationTask

TASKS: dict[str, type[Task]] = {
    ClassificationTask.name: ClassificationTask,
    DetectionTask.name: DetectionTask,
    SegmentationTask.name: SegmentationTask,
    SimMIMTask.name: SimMIMTask,
    SoftTeacherTask.name: SoftTeacherTask,
    VolumeSegmentationTask.name: VolumeSegmentationTask,
}


def task_class(name: str) -> type[Task]:
  """The Task class registered as ``name``; a ValueError listing the choices."""
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(sorted(TASKS))}")
  return TASKS[name]


def get_task(config) -> Task:
  """The task of a run config (``config.task.name``)."""
  return task_class(config.task.name)(config)


__all__ = ["ClassificationTask", "DetectionTask", "Evaluator", "SegmentationTask", "SimMIMTask",
           "SoftTeacherTask", "SumEvaluator", "TASKS", "Task", "VolumeSegmentationTask",
           "get_task", "task_class"]
