"""Training and evaluation: create state, jitted steps, the epoch loop, checkpoints, metrics."""

import contextlib
import functools
import json
import math
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from clu import metric_writers, metrics, periodic_actions
from flax.training import train_state

from seqjax import checkpoints as ckpt
from seqjax import config as config_lib
from seqjax import input_pipeline, malloc, models, native_lstm, optimizers, parallel
from seqjax import preemption, progress
from seqjax import pretrained as pretrained_lib
from seqjax import workdir as workdir_lib
from seqjax.errors import UserError

class TrainingError(UserError):
  """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""


class Interrupted(UserError):
  """SIGINT or SIGTERM: the run saved a checkpoint and stopped; rerunning resumes."""

  label = "stopped"

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code


@flax.struct.dataclass
class Metrics(metrics.Collection):
  loss: metrics.Average.from_output("loss")
  accuracy: metrics.Average.from_output("accuracy")


def binary_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """(B,) losses of (B,) logits against (B,) 0/1 labels."""
  return optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype))


def predictions(apply_fn: Callable, variables: dict, batch: dict[str, jax.Array],
                **kwargs) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(losses, correct, weights) of a batch's predictions, of the same shape: one per review
  for a classifier, one per word for a language model (models.LanguageModel); weights are 0
  on padding, 1 elsewhere. `kwargs` go to the model."""
  outputs = apply_fn(variables, batch["inputs"], **kwargs)
  if isinstance(outputs, tuple):  # A language model's (losses, correct, real) (B, P).
    losses, correct, real = outputs
    return losses, correct, real * batch["mask"][:, None]
  return (binary_cross_entropy(outputs, batch["labels"]), (outputs > 0) == (batch["labels"] == 1),
          batch["mask"])


def batch_metrics(losses: jax.Array, correct: jax.Array, weights: jax.Array) -> Metrics:
  """Loss and accuracy over a batch's real (weight 1) predictions."""
  return Metrics.single_from_model_output(loss=losses.reshape(-1),
                                          accuracy=correct.reshape(-1).astype(jnp.float32),
                                          mask=weights.reshape(-1))


def create_optimizer(config: ml_collections.ConfigDict,
                     steps_per_epoch: int = 1) -> optax.GradientTransformation:
  """Adam (AdamW with weight decay) or Keras' Adam (`config.optimizer`), with the config's
  learning-rate schedule and gradient clipping."""
  learning_rate = config.learning_rate
  if config.learning_rate_schedule == "cosine":
    learning_rate = optax.cosine_decay_schedule(learning_rate,
                                                steps_per_epoch * config.num_epochs)
  if config.optimizer == "keras_adam":
    optimizer = optimizers.keras_adam(learning_rate, eps=config.adam_epsilon)
  elif config.weight_decay:
    optimizer = optax.adamw(learning_rate, eps=config.adam_epsilon,
                            weight_decay=config.weight_decay)
  else:
    optimizer = optax.adam(learning_rate, eps=config.adam_epsilon)
  if config.gradient_clip_norm:
    optimizer = optax.chain(optax.clip_by_global_norm(config.gradient_clip_norm), optimizer)
  if not uses_naive_bayes_bag(config):
    return optimizer

  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "trained" if models.is_trained(path) else "fixed", params)

  return optax.multi_transform({"trained": optimizer, "fixed": optax.set_to_zero()}, labels)


def uses_naive_bayes_bag(config: ml_collections.ConfigDict) -> bool:
  return bool(config.ngram_order) and config.ngram_bag == "naive_bayes"


class TrainState(train_state.TrainState):
  """Flax's train state, with an exponential moving average of the parameters when
  `ema_decay` > 0 (else `ema_params` is None and checkpoints hold what they always held).

  The average is bias-corrected as Adam's moments are: after step t it weighs the parameters
  of step s <= t by (1 - d) d^(t-s) / (1 - d^t), so it is never pulled towards the
  initialisation, even early in training.
  """
  ema_params: Any = None
  ema_decay: float = flax.struct.field(pytree_node=False, default=0.0)

  def apply_gradients(self, *, grads: Any, squared_grads: Any = None,
                      **kwargs) -> "TrainState":
    """Flax's step; `squared_grads`, if given, goes to an optimizer that takes it
    (`optimizers.keras_adam`)."""
    if squared_grads is None:
      new = super().apply_gradients(grads=grads, **kwargs)
    else:
      updates, opt_state = self.tx.update(grads, self.opt_state, self.params,
                                          squared_grads=squared_grads)
      new = self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                         opt_state=opt_state, **kwargs)
    if self.ema_params is None:
      return new
    d = self.ema_decay
    weight = (1 - d) / (1 - jnp.power(d, new.step.astype(jnp.float32)))
    return new.replace(ema_params=optax.incremental_update(new.params, self.ema_params, weight))

  @property
  def eval_params(self) -> Any:
    """What evaluation and prediction use: the moving average, if there is one."""
    return self.params if self.ema_params is None else self.ema_params


def dummy_inputs(config: ml_collections.ConfigDict) -> jax.Array:
  """(1, max_length) int32 padding: the input shape that builds the model's parameters."""
  return jnp.zeros((1, config.max_length), jnp.int32)


def create_train_state(config: ml_collections.ConfigDict,
                       model: models.Classifier | models.LanguageModel, rng: jax.Array,
                       steps_per_epoch: int = 1,
                       train_split: input_pipeline.Split | None = None,
                       start: pretrained_lib.Pretrained | None = None) -> TrainState:
  """Fresh parameters and optimizer state. `steps_per_epoch` sets a schedule's length; a
  NaiveBayesBag's ratios are counted in `train_split` (else left at zero, to be restored);
  the layers a language model has are taken from `start`, if given."""
  params = model.init({"params": rng}, dummy_inputs(config), train=False)["params"]
  if start is not None:
    params = jax.tree_util.tree_map(jnp.asarray, start.transfer(params))
  if uses_naive_bayes_bag(config) and train_split is not None:
    ratios = models.naive_bayes_ratios(train_split.inputs, train_split.labels, config.top_words,
                                       config.ngram_order, config.ngram_buckets)
    params["naive_bayes_bag"] = {**params["naive_bayes_bag"],
                                 models.LOG_COUNT_RATIO: jnp.asarray(ratios)}
  # A copy: the average must not share buffers with the parameters, which steps donate.
  ema_params = jax.tree_util.tree_map(jnp.array, params) if config.ema_decay else None
  return TrainState.create(apply_fn=model.apply, params=params,
                           tx=create_optimizer(config, steps_per_epoch),
                           ema_params=ema_params, ema_decay=config.ema_decay)


def run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """A run's (parameter initialisation, dropout) keys: with the seed, they fix the run."""
  init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(seed))
  return init_rng, dropout_rng


def jit_train_step(devices: parallel.DataParallel, adversarial_epsilon: float = 0.0,
                   embedding_squares: bool = False) -> Callable:
  """`_train_step` jitted for `devices`: the batch split over them, the state and dropout key
  replicated, the old state's buffers donated."""
  step = functools.partial(_train_step, adversarial_epsilon=adversarial_epsilon,
                           embedding_squares=embedding_squares)
  return jax.jit(step, donate_argnums=0,
                 in_shardings=(devices.replicated, devices.sharded, devices.replicated),
                 out_shardings=devices.replicated)


def adversarial_perturbation(grad: jax.Array, embedding_table: jax.Array,
                             epsilon: float) -> jax.Array:
  """The loss's steepest ascent on the embedded words: each review's gradient (B, T, D),
  scaled to L2 norm `epsilon` times the root-mean-square length of the table's (V, D) word
  vectors. Measured in word lengths, it cannot be outgrown by scaling up the embeddings."""
  word_length = jnp.sqrt(jnp.sum(jnp.square(embedding_table)) / embedding_table.shape[0])
  norms = jnp.sqrt(jnp.sum(jnp.square(grad), axis=(1, 2), keepdims=True))
  return jax.lax.stop_gradient(epsilon * word_length * grad / jnp.maximum(norms, 1e-12))


def _train_step(state: TrainState, batch: dict[str, jax.Array], dropout_rng: jax.Array,
                adversarial_epsilon: float = 0.0, embedding_squares: bool = False
                ) -> tuple[TrainState, Metrics]:
  """One Adam step on the mean loss of the batch's real predictions (`predictions`); with
  `adversarial_epsilon`, on that loss plus the loss of the same batch (and dropout)
  adversarially perturbed. With `embedding_squares`, the optimizer (Keras' Adam) is given
  Keras 3's per-occurrence squares of the embedding's gradient (`optimizers.embedding_squares`)."""
  rng = jax.random.fold_in(dropout_rng, state.step)  # A pure function of the step: resumable.

  def loss_fn(params, perturbation=None, embedded_probe=None):
    variables = {"params": params}
    if embedded_probe is not None:
      variables[models.PROBES] = {models.EMBEDDED: embedded_probe}
    outputs = predictions(state.apply_fn, variables, batch, train=True,
                          perturbation=perturbation, rngs={"dropout": rng})
    losses, _, weights = outputs
    return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1), outputs

  if embedding_squares:
    rows, dim = models.embedding_table(state.params).shape
    probe = jnp.zeros((*batch["inputs"].shape, dim), jnp.float32)
    (grads, embedded_grad), outputs = jax.grad(loss_fn, argnums=(0, 2), has_aux=True)(
        state.params, None, probe)
    squared_grads = jax.tree_util.tree_map(jnp.square, grads)
    squared_grads["embedding"]["embedding"] = optimizers.embedding_squares(
        embedded_grad, models.embedding_ids(batch["inputs"], rows), rows)
    state = state.apply_gradients(grads=grads, squared_grads=squared_grads)
    return state, batch_metrics(*outputs)
  if not adversarial_epsilon:
    grads, outputs = jax.grad(loss_fn, has_aux=True)(state.params)
  else:
    table = models.embedding_table(state.params)
    zeros = jnp.zeros((*batch["inputs"].shape, table.shape[1]), jnp.float32)
    (grads, embedded_grad), outputs = jax.grad(loss_fn, argnums=(0, 1), has_aux=True)(
        state.params, zeros)
    perturbation = adversarial_perturbation(embedded_grad, table, adversarial_epsilon)
    adversarial_grads, _ = jax.grad(loss_fn, has_aux=True)(state.params, perturbation)
    grads = jax.tree_util.tree_map(jnp.add, grads, adversarial_grads)
  state = state.apply_gradients(grads=grads)
  return state, batch_metrics(*outputs)


def _eval_step(state: TrainState, batch: dict[str, jax.Array]) -> Metrics:
  return batch_metrics(*predictions(state.apply_fn, {"params": state.eval_params}, batch,
                                    train=False))


# On one device; `train_and_evaluate` jits them again with the shardings of all devices.
train_step = jax.jit(_train_step, static_argnames=("adversarial_epsilon", "embedding_squares"))
eval_step = jax.jit(_eval_step)


def evaluate(state: TrainState, split: input_pipeline.Split, batch_size: int,
             bucket_width: int = 0, step: Callable = eval_step,
             put_batch: Callable = lambda batch: batch, description: str = "",
             shown: bool = False) -> dict[str, float]:
  """Loss and accuracy over every example of `split`, each counted once; a progress line
  named `description` on the terminal if `shown`."""
  total = None
  with progress.bar(len(split), description, shown=shown) as bar:
    for batch in input_pipeline.batches(split, batch_size, split.order(bool(bucket_width)),
                                        bucket_width):
      m = step(state, put_batch(batch))
      total = m if total is None else total.merge(m)
      if not bar.disable:
        jax.block_until_ready(m)  # The step runs asynchronously: count it once it has run.
        bar.update(int(batch["mask"].sum()))
  return {k: float(v) for k, v in total.compute().items()}


def print_summary(model: models.Classifier, config: ml_collections.ConfigDict) -> None:
  """A table of layers, output shapes and parameter counts, like Keras' `model.summary()`."""
  print(model.tabulate({"params": jax.random.PRNGKey(0)}, dummy_inputs(config), train=False,
                       depth=1, console_kwargs={"force_terminal": False, "width": 110}), flush=True)
  if uses_naive_bayes_bag(config):
    print(f"Of these, the {config.ngram_buckets:,} naive-Bayes ratios ({models.LOG_COUNT_RATIO}) "
          "are counted from the training split, not trained.", flush=True)


def _last_complete_checkpoint(checkpoints: ckpt.Checkpoints) -> str:
  step = checkpoints.last_complete_step()
  if step is None:
    return "No checkpoint was complete yet: rerunning starts over."
  return (f"The last complete checkpoint, step {step} in {checkpoints.directory}, is kept: "
          "rerun the same command to resume from it.")


def _interrupted(signum: int, step: int, checkpoints: ckpt.Checkpoints) -> Interrupted:
  """The error that ends a run stopped by `signum` after saving the checkpoint of `step`."""
  checkpoints.wait()  # The message promises a complete checkpoint.
  return Interrupted(f"{signal.Signals(signum).name} received: saved the checkpoint of step "
                     f"{step} in {checkpoints.directory}. Rerun the same command to resume.",
                     exit_code=128 + signum)


def _check_finite(first_bad_step: jax.Array, checkpoints: ckpt.Checkpoints) -> None:
  """Stops the run if a step had a NaN or infinite loss; no checkpoint is written after it."""
  step = int(first_bad_step)
  if step >= 0:
    raise TrainingError(
        f"The training loss became NaN or infinite at step {step}. Stopped without saving; the "
        f"last good checkpoint (step {checkpoints.latest_step()}) is kept. Lower "
        "--config.learning_rate, or check the data.")


def _evaluate_splits(state: TrainState, splits: dict[str, input_pipeline.Split],
                     config: ml_collections.ConfigDict, step: Callable,
                     put_batch: Callable) -> dict[str, float]:
  """<split>_loss and <split>_accuracy of each split, and the seconds they took."""
  start = time.time()
  record = {f"{name}_{k}": v for name, split in splits.items()
            for k, v in evaluate(state, split, config.eval_batch_size, config.bucket_width,
                                 step, put_batch, f"evaluate {name}",
                                 jax.process_index() == 0).items()}
  if config.task == "language_model":  # Its loss is the mean cross-entropy per word.
    record.update({f"{name}_perplexity": math.exp(record[f"{name}_loss"]) for name in splits})
  return {**record, "eval_seconds": round(time.time() - start, 2)}


def _epoch_splits(data: input_pipeline.Data, config: ml_collections.ConfigDict
                  ) -> dict[str, input_pipeline.Split]:
  """What each epoch is evaluated on: validation (if any), and test unless it is kept back."""
  splits = {} if data.validation is None else {"validation": data.validation}
  if config.evaluate_test == "every_epoch":
    splits["test"] = data.test
  return splits


def _results(config: ml_collections.ConfigDict, num_params: int, data: input_pipeline.Data,
             history: list[dict], final_test: dict[str, float] | None) -> dict[str, Any]:
  """What results.json holds: the test figures, totals, and every epoch.

  The test figures are the final epoch's, or with evaluate_test='best_epoch' those of the one
  test evaluation, `final_test`, of the best epoch on validation; 'never' gives none.
  """
  final = history[-1]
  train_seconds = sum(r["train_seconds"] for r in history)
  test = final_test or final
  results = {
      "config_name": config.name,
      "num_params": num_params,
      **{k: test[k] for k in ("test_accuracy", "test_loss") if k in test},
      "train_seconds": round(train_seconds, 2),
      "train_examples_per_second": round(
          sum(r["train_examples"] for r in history) / train_seconds, 1),
      "num_train_examples": len(data.train),
      "num_test_examples": len(data.test),
      "epochs": history,
      "platform": jax.devices()[0].platform,
      "lstm_path": native_lstm.path_in_use(),
      "jax_version": jax.__version__,
  }
  if data.validation is not None:
    best = workdir_lib.best_epoch(history)
    results.update(validation_accuracy=final["validation_accuracy"],
                   validation_loss=final["validation_loss"],
                   num_validation_examples=len(data.validation),
                   best_epoch=best["epoch"],
                   best_epoch_validation_accuracy=best["validation_accuracy"])
    if "validation_perplexity" in final:
      results.update(validation_perplexity=final["validation_perplexity"],
                     best_epoch_validation_perplexity=best["validation_perplexity"])
    if final_test:
      results["test_evaluated_at_epoch"] = best["epoch"]
    elif config.evaluate_test == "every_epoch":
      results.update(best_epoch_test_accuracy=best["test_accuracy"],
                     best_epoch_test_loss=best["test_loss"])
  return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config`'s model, evaluating after each epoch; returns what results.json holds.

  Re-running with the same workdir resumes from its latest checkpoint.
  """
  config_lib.validate(config)
  devices = parallel.DataParallel.over_all_devices()
  devices.check_batch_sizes(config.batch_size, config.eval_batch_size)
  malloc.keep_freed_memory(jax.default_backend())
  workdir = os.path.abspath(workdir)
  workdir_lib.check_config(workdir, config)
  start = pretrained_lib.load(config.init_from, config) if config.init_from else None
  data = input_pipeline.load_data(config, start.vocabulary if start else None)
  is_main = jax.process_index() == 0  # Only process 0 writes files other than checkpoints.
  os.makedirs(workdir, exist_ok=True)
  if is_main:
    workdir_lib.write_json(os.path.join(workdir, workdir_lib.CONFIG),
                           json.loads(config.to_json()))
    data.vocabulary.save(os.path.join(workdir, workdir_lib.VOCABULARY))
  parallel.barrier("seqjax: workdir written")  # No process reads it before process 0 wrote it.
  logging.info("Examples: %d train, %d validation, %d test.", len(data.train),
               len(data.validation) if data.validation else 0, len(data.test))

  model = models.create_model(config)
  if is_main:
    print_summary(model, config)
  init_rng, dropout_rng = run_keys(config.seed)
  replicated = devices.replicated
  steps_per_epoch = input_pipeline.num_batches(len(data.train), config.batch_size)
  state = jax.device_put(
      create_train_state(config, model, init_rng, steps_per_epoch, data.train, start),
      replicated)
  dropout_rng = jax.device_put(dropout_rng, replicated)
  num_params = models.count_params(state.params)
  sharded_train_step = jit_train_step(devices, config.adversarial_epsilon,
                                     config.keras3_embedding_squares)
  sharded_eval_step = jax.jit(_eval_step, in_shardings=(replicated, devices.sharded),
                              out_shardings=replicated)

  with contextlib.ExitStack() as stack:
    checkpoints = ckpt.Checkpoints(os.path.join(workdir, workdir_lib.CHECKPOINTS),
                                   config.keep_checkpoints)
    stack.callback(checkpoints.close)
    # With a validation split, the epoch with the best validation accuracy is kept apart.
    best_checkpoint = None
    if data.validation is not None:
      best_checkpoint = ckpt.Checkpoints(os.path.join(workdir, workdir_lib.BEST_CHECKPOINT), 1)
      stack.callback(best_checkpoint.close)
    epoch_metrics = jax.device_put(Metrics.empty(), replicated)
    restored = checkpoints.restore_latest(state, epoch_metrics)
    if restored:
      state, epoch_metrics = restored
      logging.info("Resumed from the checkpoint at step %d.", int(state.step))
    elif start is not None:
      logging.info("Embedding and LSTM layers from the language model in %s (step %d).",
                   start.workdir, start.step)
    start_step = int(state.step)
    history = workdir_lib.read_history(workdir, start_step // steps_per_epoch)
    if is_main:
      workdir_lib.write_history(workdir, history)
      if start is not None and start_step == 0:  # Which pretrained step this run started from.
        workdir_lib.write_json(os.path.join(workdir, workdir_lib.INIT_FROM),
                               {"workdir": start.workdir, "step": start.step})

    writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)
    stack.callback(writer.close)
    if start_step == 0:
      writer.write_hparams(config.to_dict())
    report_progress = periodic_actions.ReportProgress(
        num_train_steps=steps_per_epoch * config.num_epochs, writer=writer)
    # The first step with a non-finite loss, kept on the devices until checked.
    first_bad_step = jax.device_put(jnp.array(-1), replicated)
    stops = stack.enter_context(preemption.StopRequests(
        lambda: _last_complete_checkpoint(checkpoints)))

    for epoch in range(start_step // steps_per_epoch, config.num_epochs):
      order = input_pipeline.train_order(data.train, config.batch_size, config.seed, epoch,
                                         bucketed=bool(config.bucket_width))
      skip = max(0, start_step - epoch * steps_per_epoch)  # Batches done before a resume.
      if not skip:
        epoch_metrics = jax.device_put(Metrics.empty(), replicated)
      epoch_start, stop_signal = time.time(), None
      with progress.bar(len(data.train), f"epoch {epoch + 1}/{config.num_epochs}",
                        initial=min(len(data.train), skip * config.batch_size),
                        shown=is_main) as bar:
        for i, batch in enumerate(input_pipeline.batches(data.train, config.batch_size, order,
                                                         config.bucket_width)):
          if i < skip:
            continue
          state, step_metrics = sharded_train_step(state, devices.put_batch(batch), dropout_rng)
          epoch_metrics = epoch_metrics.merge(step_metrics)
          step = epoch * steps_per_epoch + i + 1
          if not bar.disable:
            # The step runs asynchronously: count its examples once it has run.
            jax.block_until_ready(step_metrics)
            bar.set_postfix_str(f"step {i + 1}/{steps_per_epoch}", refresh=False)
            bar.update(min(len(data.train), (i + 1) * config.batch_size) - bar.n)
          first_bad_step = jnp.where((first_bad_step < 0) & ~jnp.isfinite(
              step_metrics.loss.total), step, first_bad_step)
          report_progress(step)
          if step % config.log_every_steps == 0:
            _check_finite(first_bad_step, checkpoints)
            m = epoch_metrics.compute()
            logging.info("epoch %d/%d  step %d/%d  loss %.4f  accuracy %.4f  %.0f examples/s",
                         epoch + 1, config.num_epochs, i + 1, steps_per_epoch, m["loss"],
                         m["accuracy"],
                         (i + 1 - skip) * config.batch_size / (time.time() - epoch_start))
          # A stop on an epoch's last step waits for the epoch's evaluation, so that its
          # record is complete when the run resumes.
          stop_signal = stops.stop_signal(step)
          stop_now = stop_signal and i + 1 < steps_per_epoch
          if stop_now or (config.checkpoint_every_steps and i + 1 < steps_per_epoch
                          and step % config.checkpoint_every_steps == 0):
            _check_finite(first_bad_step, checkpoints)
            checkpoints.save(step, state, epoch_metrics)
          if stop_now:
            raise _interrupted(stop_signal, step, checkpoints)
      _check_finite(first_bad_step, checkpoints)
      train_seconds = time.time() - epoch_start
      num_trained = min(len(data.train), (steps_per_epoch - skip) * config.batch_size)

      record = {"epoch": epoch + 1, "step": int(state.step),
                **{f"train_{k}": float(v) for k, v in epoch_metrics.compute().items()},
                **_evaluate_splits(state, _epoch_splits(data, config), config,
                                   sharded_eval_step, devices.put_batch),
                "train_seconds": round(train_seconds, 2), "train_examples": num_trained,
                "train_examples_per_second": round(num_trained / train_seconds, 1)}
      logging.info("epoch %d/%d  %s", epoch + 1, config.num_epochs,
                   "  ".join(f"{k} {v:.4f}" if k.endswith(("loss", "accuracy")) else f"{k} {v}"
                             for k, v in record.items() if k not in ("epoch", "step")))
      writer.write_scalars(record["step"], {k: v for k, v in record.items()
                                            if k not in ("epoch", "step")})
      writer.flush()
      history.append(record)
      if is_main:
        workdir_lib.write_history(workdir, history)
      checkpoints.save(record["step"], state, epoch_metrics)
      if best_checkpoint is not None and record is workdir_lib.best_epoch(history):
        best_checkpoint.save(record["step"], state, epoch_metrics)
      if stop_signal:
        raise _interrupted(stop_signal, record["step"], checkpoints)

    final_test = None
    if config.evaluate_test == "best_epoch":
      best = workdir_lib.best_epoch(history)
      state, _ = best_checkpoint.restore(best["step"], state, epoch_metrics)
      final_test = _evaluate_splits(state, {"test": data.test}, config, sharded_eval_step,
                                    devices.put_batch)
      logging.info("The test split, evaluated once, on epoch %d (best on validation): "
                   "accuracy %.4f, loss %.4f", best["epoch"], final_test["test_accuracy"],
                   final_test["test_loss"])

  results = _results(config, num_params, data, history, final_test)
  init_from = os.path.join(workdir, workdir_lib.INIT_FROM)
  if os.path.exists(init_from):
    with open(init_from) as f:
      results["init_from"] = json.load(f)
  if is_main:
    workdir_lib.write_json(os.path.join(workdir, workdir_lib.RESULTS), results)
  if "test_accuracy" in results:
    logging.info("Test accuracy %.4f, loss %.4f", results["test_accuracy"],
                 results["test_loss"])
  logging.info("Results in %s", os.path.join(workdir, workdir_lib.RESULTS))
  return results
