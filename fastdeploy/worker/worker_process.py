"""Tensor parallelism across processes: rank 0 in the user's process, ranks 1..N-1 in spawned workers.

The driver (`TensorParallelExecutor`, rank 0) runs the scheduler and the sampler; every step its
`ModelRunner` sends the step's inputs (`StepInputs`, pickled once) down one pipe per worker, then all ranks
run the same forward, meeting in the layers' all-reduces, and rank 0 samples from the gathered logits and
broadcasts the sampled ids, which async scheduling feeds back on every rank without a host round trip.

Control goes through pipes, not collectives, so that an idle worker waits without a timeout and sees
the driver's death as end-of-file. A worker reports "started", then "ready" once its shard is loaded
and its KV cache sized (the ranks agree on the smallest block count), or "error" with its traceback.

Shutdown: a stop message and a join; workers still alive after a grace period (or at once after a
failed step, when a rank may be stuck mid-collective) are terminated. It runs on `del llm` and at
interpreter exit (weakref.finalize), and after any exception in a step, KeyboardInterrupt included:
a failed step leaves the ranks out of step, so the engine refuses further steps. Workers ignore
SIGINT, so Ctrl-C in a terminal (which signals the whole process group) reaches the driver only.
"""
from __future__ import annotations

import multiprocessing as mp
import pickle
import signal
import sys
import traceback
import weakref
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

import torch

from fastdeploy.distributed import destroy_process_group, free_port, init_process_group, require_no_process_group
from fastdeploy.engine.scheduler import ScheduledRequest
from fastdeploy.worker.model_runner import LaunchedStep, ModelRunner, StepInputs, StepOutput

STOP = b""                  # driver -> worker: leave the loop
STOP_GRACE_S = 10.0         # how long a stopping worker may take before it is terminated


@dataclass
class WorkerSpec:
    """What every rank needs to build its shard (pickled to the spawned workers)."""
    model_path: str
    hf_config: object
    args: object            # EngineArgs
    dtype: torch.dtype
    device: torch.device    # rank 0's; rank r takes the r-th GPU after it
    port: int               # the process group's rendezvous on localhost

    def device_of(self, rank: int) -> torch.device:
        if self.device.type == "cpu":
            return self.device
        return torch.device("cuda", (self.device.index or 0) + rank)


# ---- worker side ------------------------------------------------------------------------------------

def worker_main(rank: int, spec: WorkerSpec, conn: Connection) -> None:
    """Entry point of rank `rank`'s process: build the shard, then run forwards until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)        # Ctrl-C is the driver's to handle
    world = spec.args.tensor_parallel_size
    runner = None
    try:
        conn.send(("started", None))
        device = spec.device_of(rank)
        if device.type == "cuda":       # kernels and CUDA graphs go to the current device
            torch.cuda.set_device(device)
        else:                           # share the cores with the other ranks
            torch.set_num_threads(max(1, torch.get_num_threads() // world))
        init_process_group(rank, world, spec.port, device)
        runner = ModelRunner(spec.model_path, spec.hf_config, spec.args, spec.dtype, device, rank=rank,
                             on_loaded=lambda: conn.send(("loaded", None)))
        conn.send(("ready", None))
        while (message := conn.recv_bytes()) != STOP:
            runner.follow(pickle.loads(message))
    except EOFError:
        pass                            # the driver is gone
    except BaseException:
        # also on stderr: on GPUs the driver may be stuck in a collective this rank never joins, and
        # cannot receive the report until NCCL's timeout
        print(f"fastdeploy tensor-parallel rank {rank} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:
            pass
    finally:
        release_graphs(runner)
        destroy_process_group()


def release_graphs(runner: ModelRunner | None) -> None:
    """Frees the runner's CUDA graphs, which hold captured collectives: before the process group goes."""
    if runner is not None and runner.graphs is not None:
        runner.graphs = None
        torch.cuda.synchronize(runner.device)


# ---- driver side ------------------------------------------------------------------------------------

class TensorParallelExecutor:
    """Starts the workers, holds rank 0's `ModelRunner` (`.runner`) and runs steps across all ranks."""

    def __init__(self, model_path: str, hf_config, args, dtype: torch.dtype, device: torch.device):
        require_no_process_group()
        spec = WorkerSpec(model_path, hf_config, args, dtype, device, free_port())
        world = args.tensor_parallel_size
        self._workers = _Workers()
        # stops the workers when the engine is collected, or at interpreter exit; holds no reference to self
        weakref.finalize(self, self._workers.stop)
        try:
            self._workers.start(spec, world)
            self._workers.expect("started")
            init_process_group(0, world, spec.port, spec.device_of(0))
            self._workers.owns_group = True
            self.runner = self._workers.runner = ModelRunner(model_path, hf_config, args, dtype, device, rank=0,
                                                             on_loaded=lambda: self._workers.expect("loaded"))
            self._workers.expect("ready")
        except BaseException as e:
            self._stop_and_raise(e)
        self.runner.send_inputs = self._workers.send

    # ModelRunner's step interface, run across all ranks
    def launch(self, scheduled: list[ScheduledRequest], prev: LaunchedStep | None = None) -> LaunchedStep:
        return self._guarded(self.runner.launch, scheduled, prev)

    def collect(self, step: LaunchedStep) -> StepOutput:
        return self._guarded(self.runner.collect, step)

    def execute(self, scheduled: list[ScheduledRequest]) -> StepOutput:
        return self.collect(self.launch(scheduled))

    def _guarded(self, fn, *args):
        """Runs `fn` (a part of a step on rank 0); a failure stops every rank, as they are out of step."""
        if not self._workers.running:
            raise RuntimeError("the tensor-parallel workers have stopped (a step failed earlier): "
                               "create a new LLM")
        try:
            return fn(*args)
        except BaseException as e:
            self._stop_and_raise(e)

    def _stop_and_raise(self, e: BaseException):
        """Stops every worker at once and re-raises, with a worker's traceback when one failed."""
        errors = self._workers.stop(graceful=False)
        if errors and not isinstance(e, KeyboardInterrupt):
            raise RuntimeError("tensor-parallel worker failed:\n" + "\n".join(errors)) from e
        raise e


class _Workers:
    """The worker processes and the driver's end of their pipes (rank r at index r - 1)."""

    def __init__(self):
        self.processes: list[mp.Process] = []
        self.conns: list[Connection] = []
        self.running = False
        self.owns_group = False     # the driver joined the process group (and must leave it)
        self.runner: ModelRunner | None = None      # rank 0's, whose graphs go before the group

    def start(self, spec: WorkerSpec, world: int) -> None:
        ctx = mp.get_context("spawn")
        for rank in range(1, world):
            conn, child_conn = ctx.Pipe()
            # daemon: multiprocessing terminates it at exit even if nothing else does
            p = ctx.Process(target=worker_main, args=(rank, spec, child_conn), name=f"fastdeploy-tp-rank{rank}",
                            daemon=True)
            p.start()
            child_conn.close()
            self.processes.append(p)
            self.conns.append(conn)
        self.running = True

    def expect(self, state: str) -> None:
        """Waits until every worker reports `state`; raises if one reports an error or dies first."""
        for rank, (p, conn) in enumerate(zip(self.processes, self.conns), start=1):
            wait([conn, p.sentinel])
            if not conn.poll():         # the process ended
                p.join()
                raise RuntimeError(
                    f"tensor-parallel worker {rank} exited with code {p.exitcode} before it was {state} (a script "
                    "that starts an LLM with tensor_parallel_size > 1 must do it under `if __name__ == "
                    "'__main__':`: the workers are spawned and import the main module)")
            kind, detail = conn.recv()
            if kind != state:
                raise RuntimeError(f"tensor-parallel worker {rank} failed:\n{detail}")

    def send(self, x: StepInputs) -> None:
        message = pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL)
        for conn in self.conns:
            conn.send_bytes(message)

    def stop(self, graceful: bool = True) -> list[str]:
        """Stops the workers (idempotent); returns the tracebacks of those that failed."""
        if graceful:
            for conn in self.conns:
                try:
                    conn.send_bytes(STOP)
                except OSError:
                    pass
        errors = []
        for p, conn in zip(self.processes, self.conns):
            p.join(STOP_GRACE_S if graceful else 0.5)
            if p.is_alive():
                p.terminate()
                p.join(STOP_GRACE_S)
            if p.is_alive():
                p.kill()
                p.join()
            errors += _error_messages(conn)
            conn.close()
        self.processes, self.conns, self.running = [], [], False
        if self.owns_group:
            release_graphs(self.runner)
            self.runner = None
            destroy_process_group()
            self.owns_group = False
        return errors


def _error_messages(conn: Connection) -> list[str]:
    """The "error" reports waiting in a stopped worker's pipe."""
    errors = []
    try:
        while conn.poll():
            kind, detail = conn.recv()
            if kind == "error":
                errors.append(detail)
    except (EOFError, OSError):
        pass
    return errors
