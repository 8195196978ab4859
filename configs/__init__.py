"""Training recipes, one file per run (``python -m swin_jax.main --config=configs/X.py``)."""
