"""Data parallelism over every device of every process, with JAX's SPMD runtime.

One mesh axis, 'data': each global batch is split over all devices, parameters and optimizer
state are replicated, and the steps are jitted with these shardings. With several processes
(a Cloud TPU pod slice, a GPU cluster), each process holds the same global batch order and
puts only its own rows on its own devices.
"""

import dataclasses
import os

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from seqjax.errors import ConfigError


def _multi_process_environment() -> bool:
  """Whether a launcher says there are several processes (Cloud TPU pod, SLURM, Open MPI)."""
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return (len([h for h in hosts.split(",") if h]) > 1
          or int(os.environ.get("SLURM_NTASKS", "1")) > 1
          or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Starts `jax.distributed` when there are several processes; a no-op for one.

  Cloud TPU, SLURM and Open MPI tell JAX the coordinator themselves; elsewhere (GPU
  clusters, tests) pass all three arguments.
  """
  if coordinator_address is None and not _multi_process_environment():
    return
  # CPU processes exchange gradients through gloo; accelerators have their own collectives.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  logging.info("Process %d of %d; %d devices in all, %d here.", jax.process_index(),
               jax.process_count(), jax.device_count(), jax.local_device_count())


def barrier(name: str) -> None:
  """Waits until every process has reached the barrier `name`; a no-op for one process."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


@dataclasses.dataclass(frozen=True)
class DataParallel:
  """The mesh over all devices and the two shardings the training steps use."""

  mesh: Mesh

  @classmethod
  def over_all_devices(cls) -> "DataParallel":
    return cls(Mesh(np.array(jax.devices()), ("data",)))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  @property
  def sharded(self) -> NamedSharding:
    """Split along the first (batch) axis over the 'data' axis of the mesh."""
    return NamedSharding(self.mesh, PartitionSpec("data"))

  def check_batch_sizes(self, batch_size: int, eval_batch_size: int) -> None:
    devices = self.mesh.devices.size
    for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
      if value % devices:
        raise ConfigError(f"config.{key}={value} is invalid: it must divide by the {devices} "
                          f"devices; use a multiple of {devices}, e.g. "
                          f"{devices * max(1, round(value / devices))}.")

  def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """The global batch as arrays split over all devices; this process puts only its rows."""
    count, index = jax.process_count(), jax.process_index()

    def put(x: np.ndarray) -> jax.Array:
      rows = len(x) // count
      local = x[index * rows:(index + 1) * rows]
      return jax.make_array_from_process_local_data(self.sharded, local, x.shape)

    return {k: put(v) for k, v in batch.items()}
