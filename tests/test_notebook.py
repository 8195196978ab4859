"""notebooks/tour.ipynb runs top to bottom in a real Jupyter kernel, and is stored stripped.

The kernel is the test's own Python (ipykernel's ``python3`` kernel launches
``sys.executable``; the first, injected cell checks it). It gets one CPU device, as a user's
notebook does, and ``SWIN_JAX_RUN``: a run directory written by a few steps of the tiny demo
config, standing in for ``make demo``'s ``runs/demo``.
"""

from __future__ import annotations

import os
import sys

import nbformat
from nbclient import NotebookClient
import pytest

from swin_jax.data import demo_dataset
from train_runs import REPO, check, compilation_cache_dir, compilation_cache_env, run_main

pytestmark = pytest.mark.xdist_group("notebook")

NOTEBOOK = os.path.join(REPO, "notebooks", "tour.ipynb")
RUN_FLAGS = ("--config.total_steps=4", "--config.checkpoint_every_steps=4")
# The figures the tour draws: two of the window ops, the head's training curves, two of
# attention.
NUM_FIGURES = 5
MAX_STORED_BYTES = 64 * 1024
STRIP_HINT = "store it stripped: pip install nbstripout && nbstripout notebooks/tour.ipynb"


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
  return compilation_cache_env(compilation_cache_dir(tmp_path_factory))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, cache_env) -> str:
  """A training run directory (config.json, metrics, a checkpoint) of the tiny demo config."""
  tmp = tmp_path_factory.mktemp("notebook")
  data_dir = str(tmp / "tfds")
  demo_dataset.ensure_demo_dataset(data_dir)
  workdir = str(tmp / "run")
  check(run_main(workdir, data_dir, *RUN_FLAGS, env=cache_env))
  return workdir


def _kernel_check_cell() -> nbformat.NotebookNode:
  return nbformat.v4.new_code_cell(
      f"import sys\nassert sys.prefix == {sys.prefix!r}, ('kernel is not the test\\'s Python', "
      "sys.executable)")


@pytest.fixture(scope="module")
def executed(demo_run, cache_env) -> nbformat.NotebookNode:
  """The tour after a run in a fresh kernel; a cell that raises fails here, naming it."""
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  notebook.cells.insert(0, _kernel_check_cell())
  kernel_env = {**os.environ, **cache_env, "SWIN_JAX_RUN": demo_run,
                "XLA_FLAGS": ""}  # one CPU device (conftest gives this process 8)
  client = NotebookClient(notebook, kernel_name="python3", timeout=240,
                          resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
  client.execute(env=kernel_env)
  return notebook


def _outputs(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
  return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]


def test_tour_runs_top_to_bottom_in_a_jupyter_kernel(executed):
  errors = [o for o in _outputs(executed) if o.output_type == "error"]
  assert not errors, errors
  assert all(c.execution_count for c in executed.cells if c.cell_type == "code")


def test_tour_draws_its_figures_inline(executed):
  figures = [o for o in _outputs(executed) if "image/png" in o.get("data", {})]
  assert len(figures) == NUM_FIGURES


def test_committed_notebook_is_stripped():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  for index, cell in enumerate(notebook.cells):
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, (
          f"cell {index} holds outputs; {STRIP_HINT}")
    assert set(cell.metadata) <= {"tags"}, f"cell {index} metadata {dict(cell.metadata)}"
  assert set(notebook.metadata) <= {"kernelspec", "language_info"}, (
      f"notebook metadata {sorted(notebook.metadata)}; {STRIP_HINT}")
  assert os.path.getsize(NOTEBOOK) < MAX_STORED_BYTES, STRIP_HINT
