"""Soft Teacher, Swin-T Faster R-CNN, all of COCO train2017 labelled plus unlabeled2017
(the full-label 720k recipe). See ``configs/soft_teacher/common.py``."""

from configs.soft_teacher import common


def get_config():
  return common.soft_teacher_coco(percent=100)
