"""SIGTERM and SIGINT: stop the run promptly, leave nothing half-written, exit with 128 + the signal number.

Why not a Python signal handler: Holoscan (4.2) installs its own C++ handler when the graph starts. On a
signal it asks the scheduler to stop, waits 3 seconds for the operator that is running (a training loop
runs far longer) and then exits with code 1, "internal error" here, without a word about what was
written. A Python handler would not help either: Python runs handlers only in the main thread, which sits
in Holoscan's C++ run loop, while the operators compute in a Holoscan worker thread.

So the signals never reach any handler. :func:`block_stop_signals` blocks SIGTERM and SIGINT in the calling
thread before any other thread exists; every thread started later (Holoscan's workers, torch's and
OpenBLAS's pools) inherits the mask, so the kernel keeps the signal pending for the one thread that asks
for it: :class:`SignalWatcher`'s, with ``sigtimedwait``. That thread sets the run's
:class:`~operators.exit_status.StopRequest`, which the operators ask once per training step, per inference
batch and per file written, so the run winds down within a step: the series in progress is not written,
its temporary folder is removed, and ``app.main`` logs one line ``stopped by signal SIGTERM (exit code
143); N series written, M not written`` and exits with 128 + the signal number.

If the run has not ended ``grace_s`` seconds after the signal (a step without a stop check, such as
reading a huge input or computing the weight maps of a large volume), or when a second signal arrives,
``on_deadline`` ends the process at once (``app.main`` removes the temporary folders, logs the line and
calls ``os._exit``). ``docker stop`` waits 10 seconds before SIGKILL, Kubernetes 30 by default:
:data:`STOP_GRACE_S` stays below both.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

from operators.exit_status import StopRequest, signal_name

__all__ = ["STOP_GRACE_S", "STOP_SIGNALS", "SignalWatcher", "block_stop_signals", "restore_signals"]

log = logging.getLogger(__name__)

#: The signals that stop a run: SIGTERM (``docker stop``, Kubernetes, the MAP entrypoint) and SIGINT (Ctrl-C).
STOP_SIGNALS: frozenset[signal.Signals] = frozenset({signal.SIGTERM, signal.SIGINT})
#: Seconds the pipeline has to stop by itself after a signal before the process is ended.
STOP_GRACE_S = 5.0
_POLL_S = 0.2


def block_stop_signals() -> set[signal.Signals]:
    """Block :data:`STOP_SIGNALS` in the calling thread, and so in every thread it starts from now on.

    Call it first, before importing numpy or torch (their thread pools start at import): a thread that
    existed before would still receive the signal. Returns the previous mask.
    """
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS))


def restore_signals(previous: set[signal.Signals]) -> None:
    """Undo :func:`block_stop_signals` (for a caller that goes on after ``app.main.main``). A stop signal
    that arrived after the watcher ended is taken first, with a warning: the run it was meant for is over."""
    while (late := _wait(0)) is not None:
        log.warning("received %s after the run ended", signal_name(late))
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _wait(timeout_s: float) -> int | None:
    """A pending stop signal (its number), waiting at most ``timeout_s``; ``None`` when none came.

    CPython 3.11's ``sigtimedwait`` returns an uninitialised ``struct_siginfo`` instead of ``None`` when the
    wait is interrupted (EINTR) after its deadline: anything but a stop signal is no signal.
    """
    received = signal.sigtimedwait(STOP_SIGNALS, timeout_s)
    if received is None or received.si_signo not in STOP_SIGNALS:
        return None
    return received.si_signo


class SignalWatcher:
    """A thread that receives :data:`STOP_SIGNALS` (blocked by :func:`block_stop_signals`) and stops the run.

    Args:
        stop: set on the first signal.
        on_deadline: called with the signal number ``grace_s`` seconds after the first signal if the run
            is still going, or at once on a second signal; it must end the process.
        grace_s: see :data:`STOP_GRACE_S`.
    """

    def __init__(self, stop: StopRequest, on_deadline: Callable[[int], None], grace_s: float = STOP_GRACE_S) -> None:
        self.stop = stop
        self.on_deadline = on_deadline
        self.grace_s = grace_s
        self._closed = threading.Event()
        self._timer: threading.Timer | None = None
        self._thread = threading.Thread(target=self._watch, name="nsn2n-signals", daemon=True)

    def __enter__(self) -> SignalWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        self._thread.join()
        if self._timer is not None:
            self._timer.cancel()

    def _watch(self) -> None:
        while not self._closed.is_set():
            received = _wait(_POLL_S)
            if received is not None:
                self._received(received)

    def _received(self, signal_number: int) -> None:
        name = signal_name(signal_number)
        if self.stop.requested:
            log.warning("received %s again: stopping now", name)
            self.on_deadline(self.stop.signal_number or signal_number)
            return
        log.warning(
            "received %s: stopping; the series in progress is not written (the process ends within %g s)",
            name,
            self.grace_s,
        )
        self.stop.request(signal_number)
        self._timer = threading.Timer(self.grace_s, self.on_deadline, args=(signal_number,))
        self._timer.daemon = True
        self._timer.start()
