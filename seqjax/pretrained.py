"""Starting a classifier from a language model run (`--config.init_from=<workdir>`).

The classifier takes the language model's vocabulary, so that each id means the same word in
both, and its embedding and (Bi)LSTM layers, which `models.recurrent_layers` names alike in
both models; its other layers start fresh.
"""

import dataclasses
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from seqjax import checkpoints as ckpt
from seqjax import tokenizer
from seqjax import workdir as workdir_lib
from seqjax.errors import ConfigError, DataError

# What must be equal in the classifier's config and the language model's for its layers to
# fit: the vocabulary's size, the embedding and the recurrent layers.
SHARED_KEYS = ("top_words", "embedding_dim", "lstm_units", "lstm_layers", "bidirectional")


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """A language model's vocabulary and parameters (those evaluation used), from `workdir`."""

  workdir: str
  step: int
  vocabulary: tokenizer.Vocabulary
  params: dict[str, Any]

  def transfer(self, params: dict[str, Any]) -> dict[str, Any]:
    """A classifier's `params` with the embedding and recurrent layers replaced by the
    language model's (the embedding's first rows, if the classifier's reads fewer words)."""
    params = dict(params)
    rows = params["embedding"]["embedding"].shape[0]
    params["embedding"] = {"embedding": np.asarray(self.params["embedding"]["embedding"])[:rows]}
    for name in params:
      if name.startswith(("lstm", "bidirectional")):
        params[name] = jax.tree_util.tree_map(np.asarray, self.params[name])
    return params


def load(workdir: str, config: ml_collections.ConfigDict) -> Pretrained:
  """The language model in `workdir`, checked to fit `config`'s classifier."""
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(workdir):
    raise DataError(f"init_from={workdir!r} does not exist. Give the --workdir of a finished "
                    "language model run (task='language_model').")
  lm_config = workdir_lib.read_config(workdir)
  if lm_config.task != "language_model":
    raise ConfigError(f"init_from={workdir!r} holds a run of task={lm_config.task!r}; a "
                      "classifier starts only from a language model (task='language_model').")
  differing = [f"{k}={config[k]!r} (the language model has {lm_config[k]!r})"
               for k in SHARED_KEYS if config[k] != lm_config[k]]
  if differing:
    raise ConfigError(f"The classifier does not fit the language model in {workdir}: "
                      f"{'; '.join(differing)}. Set these to the language model's values.")
  vocabulary = tokenizer.Vocabulary.load(os.path.join(workdir, workdir_lib.VOCABULARY))
  checkpoints, step, _ = ckpt.open_final(workdir)
  try:
    params = checkpoints.restore_eval_params(step)
  finally:
    checkpoints.close()
  return Pretrained(workdir, step, vocabulary, params)
