"""JAX's persistent compilation cache for training runs (config.compilation_cache_dir).

A restarted job (after a preemption, or the next run of the same config) loads its compiled
programs from the cache instead of compiling them again. JAX writes entries from process 0 only and
reads them on every host: on several hosts the cache needs a directory they all see (e.g.
gs://bucket/jax_cache); with the local default only process 0 finds its programs again.
"""

from __future__ import annotations

import os

import jax


def configure(path: str) -> str | None:
    """Points JAX's cache at `path` ('' leaves JAX's own setting, off unless
    JAX_COMPILATION_CACHE_DIR is set). Returns the directory in use, or None."""
    if not path:
        return jax.config.jax_compilation_cache_dir
    if "://" not in path:
        path = os.path.abspath(os.path.expanduser(path))
    if jax.config.jax_compilation_cache_dir != path:
        from jax.experimental.compilation_cache import compilation_cache as cc
        jax.config.update("jax_compilation_cache_dir", path)
        # JAX decides once per process whether the cache is on, at the first compilation; a process
        # that compiled something before this run (a notebook, a test) must be told to decide again.
        cc.reset_cache()
    return path
