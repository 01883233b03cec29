"""When to stop and save: SIGTERM (preemption) and Ctrl-C, agreed on by every host.

One host: a Python handler sets a flag. Several hosts: `jax.distributed.initialize` installs JAX's
own SIGTERM handler, which tells every process through the coordination service; a Python SIGTERM
handler would replace it, so none is installed there, and the hosts agree through Orbax's
preemption sync point instead (a local flag could differ between hosts and hang the save).

The watch is asked at every training step and between the batches of evaluations and sample
grids, so a signal during a long evaluation is noticed within one sampling batch. Every host asks
at the same places in the same order, so the running count of questions names the same moment on
every host, which is what the sync point needs.

Ctrl-C (SIGINT) acts as SIGTERM: with several hosts it is turned into a SIGTERM to this process,
so JAX's handler spreads it. A second Ctrl-C exits at once, saving nothing.
"""

from __future__ import annotations

import os
import signal
import sys

import jax

INTERRUPTED_AGAIN = 130  # the shell's code for a process ended by SIGINT


class Watch:
    def __init__(self, manager):
        self._manager = manager
        self._several = jax.process_count() > 1
        self._signalled = False
        self._questions = 0
        self.reached = False
        # The handlers replaced, put back by close(): after a run, Ctrl-C in the calling program (a
        # notebook, a test session) must interrupt it again rather than ask a finished run to save.
        self._previous = {}
        handlers = {signal.SIGINT: self._on_sigint, **({} if self._several else {signal.SIGTERM: self._on_sigterm})}
        try:
            for signum, handler in handlers.items():
                self._previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread: signals are left to the caller
            pass

    def close(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _on_sigterm(self, signum, frame):
        self._signalled = True

    def _on_sigint(self, signum, frame):
        if self._signalled:
            print("interrupted again: exiting without saving", file=sys.stderr, flush=True)
            os._exit(INTERRUPTED_AGAIN)
        self._signalled = True
        print("interrupted: saving a checkpoint, then exiting (Ctrl-C again to exit at once)", file=sys.stderr,
              flush=True)
        if self._several:
            os.kill(os.getpid(), signal.SIGTERM)

    def __call__(self) -> bool:
        """True from the moment this run must save and stop; the same answer on every host."""
        if not self.reached:
            self._questions += 1
            self.reached = (self._manager.reached_preemption(self._questions) if self._several
                            else self._signalled)
        return self.reached
