"""Soft Teacher, Swin-T Faster R-CNN, 5% of COCO train2017 labelled (fold 1; the paper
averages folds 1-5: ``--config.task.fold=N``). See ``configs/soft_teacher/common.py``."""

from configs.soft_teacher import common


def get_config():
  return common.soft_teacher_coco(percent=5)
