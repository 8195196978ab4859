"""Swin-Unet recipes (the ``segmentation`` task): the official Synapse one and a demo."""
