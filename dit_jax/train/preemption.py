"""When to stop and save: SIGTERM (preemption) and Ctrl-C, agreed on by every host.

One host: a Python handler sets a flag. Several hosts: `jax.distributed.initialize` installs JAX's
own SIGTERM handler, which tells every process through the coordination service; a Python SIGTERM
handler would replace it, so none is installed there, and the hosts agree through Orbax's
preemption sync point instead (a local flag could differ between hosts and hang the save).

The sync point matches hosts by the number each passes to it, so the watch never counts questions:
every question names its place in the program, a *position* (`at_step(step)` after a training step,
`within(step, slot)` between the sampling batches of that step's evaluations and grids). Only a new,
larger position reaches the sync point; asking again at a position (or at an earlier one) returns the
answer already agreed there. Hosts that ask a different number of times therefore still agree, which
a count of questions could not promise (a question behind a host-dependent condition would have
shifted one host's count and hung the pod).

The service sets the sync point to (the largest number any host has passed) + 1 and answers yes
only to that exact number. Positions skipped by the program (the slots of an evaluation that does
not run after this step, of a grid switched off) are therefore passed too, in order, before the new
one: otherwise a sync point that falls on a skipped slot is never reached and no host ever stops.

Ctrl-C (SIGINT) acts as SIGTERM: with several hosts it is turned into a SIGTERM to this process,
so JAX's handler spreads it. A second Ctrl-C exits at once, saving nothing.
"""

from __future__ import annotations

import os
import signal
import sys

import jax

INTERRUPTED_AGAIN = 130  # the shell's code for a process ended by SIGINT


# The sync point's counter is a C int: positions must stay below 2**31 within one process.
_MAX_POSITION = 2**31 - 1


class Watch:
    def __init__(self, manager):
        self._manager = manager
        self._several = jax.process_count() > 1
        self._signalled = False
        self._start, self._slots = 0, 1
        self._asked = -1          # the largest position the sync point was asked at
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

    def begin(self, start_step: int, last_step: int, slots_per_step: int = 0) -> None:
        """The steps this process runs, and the positions inside one step's evaluations and grids (their
        sampling batches), so that every position is unique and increasing. A run too long for the
        counter's range with them agrees at step boundaries only."""
        steps = max(last_step - start_step, 0) + 1
        self._start = start_step
        self._slots = slots_per_step + 1 if steps * (slots_per_step + 1) <= _MAX_POSITION else 1

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

    def _position(self, step: int, slot: int) -> int | None:
        return (step - self._start) * self._slots + slot

    def _ask(self, position: int | None) -> bool:
        if not self._several:  # one host: nothing to agree on
            self.reached = self.reached or self._signalled
            return self.reached
        if self.reached or position is None or position <= self._asked:
            return self.reached
        for p in range(self._asked + 1, position + 1):  # every number in turn (see the module's note)
            self._asked = p
            if self._manager.reached_preemption(p):
                self.reached = True
                break
        return self.reached

    def at_step(self, step: int) -> bool:
        """True from the step boundary after `step` on which this run must save and stop; the same
        answer on every host. Asked once per training step by the loop, on every host."""
        return self._ask(self._position(step, 0))

    def within(self, step: int, slot: int) -> bool:
        """Between the sampling batches after `step`: slot in [1, slots_per_step] names the batch (the same
        slot on every host). Other slots are answered from the last agreement."""
        return self._ask(self._position(step, slot) if 1 <= slot < self._slots else None)
