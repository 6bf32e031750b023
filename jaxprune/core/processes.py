"""Agreement between the processes of a multi-process JAX job (no-ops on one process).

Used by :mod:`jaxprune.checkpoint` and :func:`jaxprune.export.save`. Every step of a
multi-process save or restore ends in :func:`agree`: each process publishes
``None`` (done) or the error it hit, through the key-value store of ``jax.distributed``'s
coordination service, and waits (with a timeout) for all the others. A failure on one process
therefore becomes the same clear error on every process at the next step, instead of the
others blocking in a collective barrier that the failed process never reaches. A process
that dies or stalls makes the others fail after ``timeout`` seconds, naming it.

Without a coordination-service client (e.g. a runtime started some other way) the exchange
falls back to ``jax.experimental.multihost_utils.process_allgather``, which has no timeout.

On one process every function is immediate:

>>> agree(next_operation(), "write", None)  # nobody failed: returns
>>> exchange(next_operation(), "files", "{}")
['{}']
"""

from __future__ import annotations

import hashlib
import json
import os
import threading

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.core._tracing import is_concrete_array

_counter = {"n": 0}
_lock = threading.Lock()


def timeout_s() -> float:
  """Seconds a process waits for the others at each step (``JAXPRUNE_CHECKPOINT_TIMEOUT``)."""
  return float(os.environ.get("JAXPRUNE_CHECKPOINT_TIMEOUT", "600"))


def count() -> int:
  return jax.process_count()


def index() -> int:
  return jax.process_index()


def is_primary() -> bool:
  return jax.process_index() == 0


def next_operation(area: str = "checkpoint") -> str:
  """A name for one save/restore, equal on every process (each calls them in the same order)."""
  with _lock:
    _counter["n"] += 1
    return f"jaxprune/{area}/{_counter['n']}"


def _area(operation: str) -> str:
  parts = operation.split("/")
  return parts[1] if len(parts) > 2 else "checkpoint"


def _client():
  try:
    from orbax.checkpoint import multihost
    return multihost.get_jax_distributed_client()
  except Exception:  # not initialised through jax.distributed
    return None


def exchange(operation: str, stage: str, text: str) -> list[str]:
  """Publishes ``text`` and returns every process's text, in process order."""
  n = count()
  if n == 1:
    return [text]
  client = _client()
  if client is not None:
    base = f"{operation}/{stage}"
    client.key_value_set(f"{base}/{index()}", text)
    out = []
    for i in range(n):
      try:
        out.append(client.blocking_key_value_get(f"{base}/{i}", int(timeout_s() * 1000)))
      except Exception as err:  # deadline exceeded, or the coordination service went away
        raise TimeoutError(
            f"{_area(operation)} ({stage}): process {i} did not report within "
            f"{timeout_s():.0f} s (it crashed, is stuck, or is not calling the same "
            f"{_area(operation)} function): "
            f"{type(err).__name__}: {str(err)[:200]}. Set JAXPRUNE_CHECKPOINT_TIMEOUT to "
            "wait longer.") from None
    return out
  from jax.experimental import multihost_utils
  data = text.encode()
  lengths = multihost_utils.process_allgather(np.array([len(data)], np.int64))
  size = int(np.max(lengths))
  buf = np.zeros(max(size, 1), np.uint8)
  buf[:len(data)] = np.frombuffer(data, np.uint8)
  gathered = multihost_utils.process_allgather(buf)
  return [bytes(gathered[i][:int(lengths[i][0])]).decode() for i in range(n)]


def agree(operation: str, stage: str, error: BaseException | None) -> None:
  """Raises on every process if any process reports an error at this stage.

  The process that failed re-raises its own exception; the others raise an exception of the
  same type (when it is a common built-in one, else ``RuntimeError``) naming the process and
  its message.
  """
  if count() == 1:
    if error is not None:
      raise error
    return
  mine = "" if error is None else json.dumps({"type": type(error).__name__, "message": str(error)})
  reports = exchange(operation, stage, mine)
  failed = [(i, json.loads(r)) for i, r in enumerate(reports) if r]
  if not failed:
    return
  if error is not None:
    raise error
  i, first = failed[0]
  others = "" if len(failed) == 1 else f" (processes {[j for j, _ in failed]} failed)"
  kind = _BUILTIN.get(first["type"], RuntimeError)
  raise kind(f"process {i} failed{others}: {first['type']}: {first['message']}")


_BUILTIN = {e.__name__: e for e in (ValueError, TypeError, FileExistsError, FileNotFoundError,
                                    OSError, KeyError, RuntimeError, TimeoutError)}


def check_same(operation: str, stage: str, what: dict[str, str]) -> None:
  """Raises the same ``ValueError`` on every process if the processes' ``what`` values differ.

  ``what`` maps a name (``"path"``, ``"tree structure"``...) to a description; a digest of each
  is compared, and the message shows the first differing description of two processes.
  """
  if count() == 1:
    return
  digests = {k: hashlib.sha256(v.encode()).hexdigest()[:16] for k, v in what.items()}
  reports = [json.loads(r) for r in exchange(operation, stage, json.dumps(digests))]
  for name in what:
    values = [r[name] for r in reports]
    if len(set(values)) == 1:
      continue
    odd = next(i for i, v in enumerate(values) if v != values[0])
    texts = exchange(operation, f"{stage}/{name}", what[name][:200_000])
    a, b = texts[0].splitlines(), texts[odd].splitlines()
    line = next((j for j in range(max(len(a), len(b)))
                 if j >= len(a) or j >= len(b) or a[j] != b[j]), 0)
    show = lambda lines: lines[line] if line < len(lines) else "(nothing more)"
    raise ValueError(
        f"{_area(operation)}: the processes disagree on the {name}: process 0 has "
        f"{show(a)!r} where process {odd} has {show(b)!r}. Every process must make the same "
        f"call (same {name}; "
        "e.g. build the tree from the same init function on every process).")


def to_host(tree):
  """``tree`` with every array leaf as a NumPy array holding its whole (global) value.

  Arrays sharded across processes are gathered (``multihost_utils.process_allgather``, a
  collective: every process must call this with trees of the same structure and shapes, in
  the same order); other leaves are fetched with ``jax.device_get``; non-arrays stay as they
  are.

  >>> import jax.numpy as jnp
  >>> to_host({"w": jnp.arange(3), "n": None, "k": 2})
  {'k': 2, 'n': None, 'w': array([0, 1, 2], dtype=int32)}
  """
  def fetch(x):
    if is_concrete_array(x):
      if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return x  # typed keys have no NumPy form; callers refuse them by name
      if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return x

  return jax.tree_util.tree_map(fetch, tree)
