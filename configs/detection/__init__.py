"""Detection recipes (the ``detection`` task): the official Mask R-CNN Swin-T COCO ones and
a digit-scenes demo."""
