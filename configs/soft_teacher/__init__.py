"""Soft Teacher recipes (semi-supervised Faster R-CNN on Swin-T)."""
