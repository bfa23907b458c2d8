"""Data parallelism on one mesh axis, 'data': params replicated, the batch split by rows across devices.

The shard_map calls themselves, with their collectives (the all_gather of candidate embeddings, the loss pmean, the
gradient psum), are written where they are used: losses.py, train.py, distill.py. This module builds the mesh and
places arrays on it (docs/parallelism.md).

Multi-host (a TPU pod slice, several GPU hosts): every process calls jax.distributed.initialize() first, builds the
same mesh over all global devices, draws the same global batch (the sampler is deterministic from the seed), and
hands only its own rows to `shard_rows`, which assembles one global array from every process's slice.
"""
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"


def initialize(coordinator: str | None = None, num_processes: int = 0, process_id: int = -1,
               peer_timeout: int = 60) -> None:
    """Join the other processes of a multi-process run, before anything else touches JAX.

    With no coordinator, jax.distributed.initialize finds the run by itself (Cloud TPU, Slurm, Open MPI). Otherwise
    every process names process 0's HOST:PORT, the number of processes and its own number. Collectives between
    processes' CPU devices go through gloo (TCP); a process that shows no sign of life for peer_timeout seconds makes
    the others stop with an error rather than wait for it forever."""
    if coordinator is not None and not (num_processes >= 1 and 0 <= process_id < num_processes):
        raise ValueError(f"--coordinator needs --num-processes N >= 1 and --process-id 0..N-1; got "
                         f"--num-processes {num_processes} --process-id {process_id}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    where = {} if coordinator is None else \
        {"coordinator_address": coordinator, "num_processes": num_processes, "process_id": process_id}
    jax.distributed.initialize(**where, heartbeat_timeout_seconds=peer_timeout)


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
    """A 1-D mesh over the first num_devices devices (0: all of them, on every host)."""
    devices = jax.devices()
    n = num_devices or len(devices)
    if not 1 <= n <= len(devices):
        hint = " (on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=8 gives 8 virtual devices)" \
            if devices[0].platform == "cpu" else ""
        raise ValueError(f"--devices {n}: this run sees {len(devices)} {devices[0].platform} device(s){hint}")
    if jax.process_count() > 1 and n != len(devices):
        raise ValueError("--devices must be 0 (all) in a multi-host run: every host's devices hold part of the batch")
    # Explicit axis types (jax.make_mesh's default in 0.10): arrays must be placed to match the shard_map specs.
    return jax.make_mesh((n,), (AXIS,), axis_types=(AxisType.Explicit,), devices=devices[:n])


def replicate(tree, mesh):
    """Every device holds the whole tree (params, optimizer state)."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def process_rows(global_rows: int) -> slice:
    """The rows of a global batch this process loads: a disjoint, equal slice per process, in process order."""
    n, i = jax.process_count(), jax.process_index()
    if global_rows % n:
        raise ValueError(f"batch size {global_rows} is not divisible by the {n} processes")
    per = global_rows // n
    return slice(i * per, (i + 1) * per)


def shard_rows(local: np.ndarray, mesh, row_axis: int = 1) -> jax.Array:
    """One global array whose axis `row_axis` (the batch rows) is split across the mesh, from this process's rows."""
    spec = [None] * local.ndim
    spec[row_axis] = AXIS
    global_shape = list(local.shape)
    global_shape[row_axis] *= jax.process_count()
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P(*spec)), local, tuple(global_shape))


def batch_spec(batch):
    """How a batch (a NamedTuple of arrays with ROW_AXES, e.g. batch.Padded, batch.Packed) is split over the 'data'
    axis: each array along its row axis."""
    return type(batch)(*(P(*[None] * axis, AXIS) for axis in batch.ROW_AXES))


def shard_batch(batch, mesh):
    """This process's part of a batch -> global arrays split over the mesh as batch_spec says."""
    return type(batch)(*(shard_rows(x, mesh, axis) for x, axis in zip(batch, batch.ROW_AXES)))


def on_one_device(tree, mesh):
    """A mesh of one device: its arrays marked whole (no longer split over 'data'), so that a step can run without
    shard_map. Over one device shard_map's gradient all-reduce is a copy of every gradient that XLA keeps (65 ms a
    step of all-MiniLM-L6-v2 on a 2-core CPU), and the in-batch gathers are copies too."""
    return jax.tree.map(lambda x: jax.sharding.reshard(x, NamedSharding(mesh, P())), tree)


def device_key(key: jax.Array | None, axis_name: str | None) -> jax.Array | None:
    """Inside shard_map: this device's own PRNG key (different dropout on every device); unchanged outside it."""
    if key is None or axis_name is None:
        return key
    return jax.random.fold_in(key, jax.lax.axis_index(axis_name))


def agree_max(*values: int) -> tuple[int, ...]:
    """The largest of each value over all processes (one small all-gather per call in a multi-host run), for shapes
    that every process must choose alike."""
    if jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils
    return tuple(int(v) for v in multihost_utils.process_allgather(np.array(values)).max(axis=0))
