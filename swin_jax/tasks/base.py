"""The task interface: everything the one training loop needs to know about a task.

The loop (``swin_jax.train.loop``), the train step, sharding, checkpointing, preemption,
logging and resume exist once. A task supplies the parts that differ:

    task = tasks.get_task(config)           # from config.task.name
    model = task.build_model()              # a Flax module (a backbone may sit inside it)
    variables = task.init_variables(model, rng)          # {'params', 'batch_stats', ...}
    transform = task.train_transform()      # host: example, np.random.Generator -> example
    batches = task.eval_batches(process_index, process_count)   # host: eval batches + 'mask'
    loss, (metrics, model_state) = task.loss_fn(model, params, model_state, batch, rng)
    # a task with reads_extra = True also gets the state's extra and step:
    # loss_fn(..., extra=state.extra, step=state.step)
    outputs = task.eval_step(model, params, model_state, batch)     # jitted, per batch
    evaluator = task.evaluator(); evaluator.update(outputs); evaluator.result()   # host
    state = task.post_update(state)         # after each optimizer update (an EMA teacher)
    task.write_figures(model, params, model_state, workdir, step)    # host, at the end

``loss_fn``, ``eval_step`` and ``post_update`` are traced under ``jax.jit`` over the
global batch, so a BatchNorm in ``loss_fn`` averages over the whole global batch (SyncBN).
"""

from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from swin_jax.models import registry

PyTree = Any
Batch = dict[str, jax.Array]
# loss, (scalar metrics, new model state)
LossOutput = tuple[jax.Array, tuple[dict[str, jax.Array], PyTree]]


class Evaluator(abc.ABC):
  """Accumulates ``eval_step`` outputs over a whole eval set on the host."""

  @abc.abstractmethod
  def update(self, outputs: dict[str, np.ndarray]) -> None:
    """Adds one batch of ``eval_step`` outputs (numpy, the global batch)."""

  @abc.abstractmethod
  def result(self) -> dict[str, float]:
    """The metrics over everything added, named ``eval/<metric>``."""


class SumEvaluator(Evaluator):
  """Sums per-batch totals and divides by the summed ``count`` (masked means)."""

  def __init__(self, names: tuple[str, ...]):
    self.names = names
    self.totals = {name: 0.0 for name in (*names, "count")}

  def update(self, outputs: dict[str, np.ndarray]) -> None:
    for name in self.totals:
      self.totals[name] += float(outputs[name])

  def result(self) -> dict[str, float]:
    count = max(self.totals["count"], 1.0)
    return {f"eval/{name}": self.totals[name] / count for name in self.names}


class Task(abc.ABC):
  """One kind of training (classification, segmentation, detection, ...).

  ``config`` is the whole run config; the task reads ``config.task`` (its own section,
  whose schema is ``section_defaults()``), ``config.model`` and ``config.dataset``.
  """
  name: ClassVar[str]
  # True: ``loss_fn`` also takes ``extra=`` (the train state's ``extra``, e.g. an EMA
  # teacher it predicts with) and ``step=`` (the state's step before this update, e.g. for
  # a burn-in); the gradient is still taken with respect to ``params`` only.
  reads_extra: ClassVar[bool] = False

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  @classmethod
  @abc.abstractmethod
  def section_defaults(cls) -> ml_collections.ConfigDict:
    """The ``config.task`` fields of this task (besides ``name``) with neutral defaults."""

  # --- model ---

  @abc.abstractmethod
  def build_model(self) -> nn.Module:
    """The model from ``config.model``; raises ValueError if it does not fit the data."""

  @abc.abstractmethod
  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of a train batch of ``batch_size`` examples."""

  def init_variables(self, model: nn.Module, rng: jax.Array) -> PyTree:
    """``model.init`` on a one-example batch: ``{'params': ..., <collections>...}``."""
    image = self.batch_spec(1)["image"]
    return model.init(rng, jnp.zeros(image.shape, image.dtype), train=False)

  # --- data (host side) ---

  @abc.abstractmethod
  def train_transform(self) -> Callable[[dict, np.random.Generator], dict]:
    """``(example, rng) -> train example``; every random draw from ``rng``."""

  @abc.abstractmethod
  def eval_transform(self) -> Callable[[dict], dict]:
    """``example -> eval example`` (deterministic)."""

  def eval_padding(self) -> dict[str, np.ndarray]:
    """The zero example that pads the last eval batch (its ``mask`` is 0)."""
    one = {k: np.zeros(x.shape[1:], x.dtype) for k, x in self.batch_spec(1).items()}
    return {**one, "mask": np.float32(0.0)}

  def train_iterator(self, process_index: int = 0, process_count: int = 1):
    """This host's infinite train batches, resumable with ``get_state`` / ``set_state``.
    Default: ``train_transform`` over ``config.dataset.train_split`` through the one train
    pipeline; a task that mixes sources (Soft Teacher's labelled and unlabelled images)
    builds its own example stream and hands it to ``pipeline.batched_train_dataset``."""
    from swin_jax.data import pipeline  # pylint: disable=import-outside-toplevel
    return pipeline.train_iterator(self.config, process_index, process_count,
                                   self.train_transform())

  def eval_batches(self, process_index: int = 0,
                   process_count: int = 1) -> Iterable[dict[str, Any]]:
    """This host's eval batches of ``config.dataset.eval_split`` (``mask`` marks real
    examples). Every host must yield the same number of batches with the same shapes, as
    they run one program together. Default: ``eval_transform`` / ``eval_padding`` through
    the fixed-shape pipeline; a task whose examples differ in shape may group them into
    static shapes here (segmentation's mmseg test canvases)."""
    from swin_jax.data import pipeline  # pylint: disable=import-outside-toplevel
    return pipeline.eval_iterator(self.config, process_index, process_count,
                                  self.eval_transform(), self.eval_padding())

  # --- compiled steps ---

  @abc.abstractmethod
  def loss_fn(self, model: nn.Module, params: PyTree, model_state: PyTree, batch: Batch,
              rng: jax.Array) -> LossOutput:
    """The training loss of a global batch; differentiated with respect to ``params``."""

  @abc.abstractmethod
  def eval_step(self, model: nn.Module, params: PyTree, model_state: PyTree,
                batch: Batch) -> dict[str, jax.Array]:
    """What the evaluator needs from one eval batch (``batch['mask']`` marks real ones)."""

  @abc.abstractmethod
  def evaluator(self) -> Evaluator:
    """A fresh host-side accumulator for one pass over the eval set."""

  def init_extra(self, params: PyTree) -> PyTree:
    """State the task keeps besides params (e.g. an EMA teacher); ``{}`` by default."""
    del params
    return {}

  def post_update(self, state: Any) -> Any:
    """Runs after every optimizer update, inside the jitted step (e.g. EMA update)."""
    return state

  def write_figures(self, model: nn.Module, params: PyTree, model_state: PyTree,
                    workdir: str, step: int) -> list[str]:
    """Figures of the trained model, written under ``workdir`` by the main process once
    training ends (``params`` gathered on the host); returns their paths. None by default;
    SimMIM draws its reconstructions."""
    del model, params, model_state, workdir, step
    return []

  @property
  def writes_figures(self) -> bool:
    return type(self).write_figures is not Task.write_figures


def create_model_for_classes(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """``config.model`` from the registry; a ValueError if it does not predict ``num_classes``."""
  model = registry.create_model(config.model.name, **config.model.overrides)
  if model.num_classes != num_classes:
    raise ValueError(f"model {config.model.name} has {model.num_classes} classes but dataset "
                     f"{config.dataset.name} has {num_classes}; set "
                     "config.model.overrides.num_classes")
  return model


def apply_with_state(model: nn.Module, params: PyTree, model_state: PyTree, *args,
                     train: bool, rngs: dict[str, jax.Array] | None = None,
                     **kwargs) -> tuple[Any, PyTree]:
  """``model.apply`` with mutable non-param collections (BatchNorm statistics).

  Returns ``(output, new_model_state)``; in eval, or for a model without such
  collections, the state comes back unchanged.
  """
  variables = {"params": params, **model_state}
  if train and model_state:
    output, updated = model.apply(variables, *args, train=True, rngs=rngs,
                                  mutable=list(model_state), **kwargs)
    return output, dict(updated)
  return model.apply(variables, *args, train=train, rngs=rngs, **kwargs), model_state


def split_variables(variables: PyTree) -> tuple[PyTree, PyTree]:
  """``model.init``'s variables -> ``(params, model_state)``, dropping ``intermediates``."""
  variables = dict(variables)
  params = variables.pop("params")
  variables.pop("intermediates", None)
  return params, variables
