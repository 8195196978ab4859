"""UperNet recipes (the ``segmentation`` task, mmseg's loss): the official ADE20K 160k ones
and a digit-scenes demo."""
