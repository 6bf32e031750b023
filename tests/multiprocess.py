"""A bounded multi-process JAX harness: N local processes on 127.0.0.1 sharing one CPU mesh.

``Cluster(n, devices)`` starts ``n`` worker processes (``jax.distributed.initialize`` on a free
local port, gloo CPU collectives, ``devices`` fake CPU devices each, so one mesh of
``n * devices`` devices). ``cluster.run(scenario, timeout=..., **kwargs)`` calls the function
``scenario`` (a module-level function of an importable file) in every worker at once, with the
same keyword arguments, and returns one :class:`Result` per process. The workers stay up
between runs (JAX start-up is paid once per cluster); a run that does not finish within
``timeout`` seconds kills every worker and raises :class:`Hang`, so a hang fails a test and
never stalls CI (the next run starts a fresh cluster).

A scenario runs with jax already initialised and returns a JSON-serialisable value; an
exception it raises is reported per process (``Result.error``, ``Result.message``).

Used by ``tests/test_multihost.py``; also runnable by hand::

    python tests/multiprocess.py tests/multihost_scenarios.py:global_masks
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
_STARTUP_TIMEOUT = 120  # seconds for all workers to import jax and connect (loaded CI)


class Hang(RuntimeError):
  """A scenario (or the start-up) did not finish in time; every worker was killed."""


@dataclasses.dataclass(frozen=True)
class Result:
  process: int
  ok: bool
  value: Any = None
  error: str | None = None
  message: str | None = None


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _worker_env(devices: int) -> dict:
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"),
                                       env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
  env["PYTHONUNBUFFERED"] = "1"
  env.pop("PYTEST_CURRENT_TEST", None)
  return env


class Cluster:
  """``n`` local JAX processes forming one distributed runtime (see the module docstring)."""

  def __init__(self, n: int = 2, devices: int = 2):
    self.n, self.devices = n, devices
    self._procs: list[subprocess.Popen] = []
    self._dir: Path | None = None
    self._runs = 0

  # ------------------------------------------------------------------------- lifecycle

  def start(self) -> None:
    self.close()
    self._dir = Path(tempfile.mkdtemp(prefix="jaxprune-mp-"))
    port = free_port()
    env = _worker_env(self.devices)
    for i in range(self.n):
      log = open(self._dir / f"log_{i}.txt", "w")
      self._procs.append(subprocess.Popen(
          [sys.executable, __file__, "--worker", str(i), str(self.n), str(port), str(self._dir)],
          stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
          text=True, start_new_session=True))
      log.close()
    self._wait([self._dir / f"ready_{i}.json" for i in range(self.n)], _STARTUP_TIMEOUT,
               "start-up")

  def close(self) -> None:
    for p in self._procs:
      if p.poll() is None:
        try:
          p.stdin.write(json.dumps({"exit": True}) + "\n")
          p.stdin.flush()
        except (BrokenPipeError, OSError):
          pass
    deadline = time.monotonic() + 5
    for p in self._procs:
      try:
        p.wait(max(0.1, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        pass
    self._kill()

  def _kill(self) -> None:
    for p in self._procs:
      if p.poll() is None:
        try:
          os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
          pass
        p.wait()
      if p.stdin:
        try:
          p.stdin.close()
        except OSError:
          pass
    self._procs = []

  def __enter__(self):
    self.start()
    return self

  def __exit__(self, *exc):
    self.close()

  def logs(self, chars: int = 3000) -> str:
    out = []
    for i in range(self.n):
      file = self._dir / f"log_{i}.txt" if self._dir else None
      text = file.read_text(errors="replace") if file and file.exists() else ""
      out.append(f"--- process {i} (last {chars} chars) ---\n{text[-chars:]}")
    return "\n".join(out)

  # ------------------------------------------------------------------------------- runs

  def _wait(self, files: list[Path], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not all(f.exists() for f in files):
      dead = [i for i, p in enumerate(self._procs) if p.poll() is not None]
      if dead or time.monotonic() > deadline:
        logs = self.logs()
        self._kill()
        reason = (f"process(es) {dead} exited" if dead
                  else f"did not finish within {timeout:.0f} s")
        raise Hang(f"multi-process {what}: {reason}; all workers killed.\n{logs}")
      time.sleep(0.02)

  def run(self, scenario: Callable | str, *, timeout: float = 60.0, **kwargs) -> list[Result]:
    """Runs ``scenario(**kwargs)`` in every process; one :class:`Result` per process."""
    if not self._procs or any(p.poll() is not None for p in self._procs):
      self.start()
    if callable(scenario):
      file = Path(sys.modules[scenario.__module__].__file__).resolve()
      scenario = f"{file}:{scenario.__name__}"
    self._runs += 1
    tag = f"run{self._runs}"
    request = json.dumps({"scenario": scenario, "kwargs": kwargs, "tag": tag}) + "\n"
    for p in self._procs:
      p.stdin.write(request)
      p.stdin.flush()
    files = [self._dir / f"{tag}_{i}.json" for i in range(self.n)]
    self._wait(files, timeout, f"scenario {scenario}")
    return [Result(**json.loads(f.read_text())) for f in files]


# ------------------------------------------------------------------------------- worker


def _load(scenario: str) -> Callable:
  file, name = scenario.rsplit(":", 1)
  spec = importlib.util.spec_from_file_location(Path(file).stem, file)
  module = sys.modules.get(spec.name)
  if module is None or getattr(module, "__file__", None) != spec.origin:
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
  return getattr(module, name)


def _write(path: Path, payload: dict) -> None:
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(payload))
  os.replace(tmp, path)


def _worker(process_id: int, num_processes: int, port: int, directory: Path) -> None:
  import jax

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=num_processes,
                             process_id=process_id, initialization_timeout=_STARTUP_TIMEOUT)
  _write(directory / f"ready_{process_id}.json", {"devices": jax.device_count()})
  for line in sys.stdin:
    request = json.loads(line)
    if request.get("exit"):
      break
    try:
      value = _load(request["scenario"])(**request["kwargs"])
      payload = {"process": process_id, "ok": True, "value": value}
      json.dumps(payload)
    except BaseException as err:  # reported to the parent, which decides
      traceback.print_exc()
      payload = {"process": process_id, "ok": False, "error": type(err).__name__,
                 "message": str(err)}
    print(f"[worker {process_id}] done {request['tag']}", flush=True)
    _write(directory / f"{request['tag']}_{process_id}.json", payload)
  # No jax.distributed.shutdown(): it waits for every process, and the parent kills stragglers.
  os._exit(0)


def main(argv: list[str]) -> None:
  if argv and argv[0] == "--worker":
    _worker(int(argv[1]), int(argv[2]), int(argv[3]), Path(argv[4]))
    return
  with Cluster() as cluster:
    for result in cluster.run(argv[0]):
      print(result)


if __name__ == "__main__":
  main(sys.argv[1:])
