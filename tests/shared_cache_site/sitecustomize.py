"""Lets every process of a fake-CPU multi-process test read what process 0 wrote to jax's persistent
compilation cache. tests/conftest.py puts this directory first on PYTHONPATH, so each process the
suite starts (xdist workers, `dit-jax` children) imports it at start-up; the suite's own pytest
process does not, and no user's process ever does.

Why: jax writes cache entries from process 0 only, and on CPU its cache key holds two things that
differ between the processes of one job: the topology fingerprint, which each process takes from its
own view, and the device ids of the program's device assignment (process 1's local programs run on
its own devices). So process 1 of every two-process test compiled everything cold, every time. On
GPU jax already leaves the device assignment out of the key "to use cache key as invariant between
processes" (jax/_src/cache_key.py); this does the same on CPU and hashes the devices' kind in place
of the fingerprint, which is what jax itself falls back to where a backend has no topology. Programs
and compile options still enter the key whole, so what is read back is the program that was asked
for; tests/test_shared_compile_cache.py checks that process 1 now hits, that its results are
process 0's, and (the control) that without this directory it misses.

The patch is applied when jax imports its cache-key module, so processes that never import jax pay
nothing. DIT_JAX_TEST_SHARED_CACHE=0 turns it off.
"""

import importlib.abc
import importlib.util
import os
import sys
import threading

_MODULE = "jax._src.cache_key"


def _patch(module):
    names = ("get", "_hash_serialized_compile_options", "_hash_accelerator_config", "_hash_devices")
    if not all(hasattr(module, name) for name in names):
        return  # another jax: leave its key alone (tests/test_shared_compile_cache.py then fails, saying so)
    get, hash_options, hash_config = module.get, module._hash_serialized_compile_options, module._hash_accelerator_config
    key = threading.local()  # set by get() for the hashers it calls: the key of a CPU program, or not

    def patched_get(computation, devices, compile_options, backend, *args, **kwargs):
        before, key.on_cpu = getattr(key, "on_cpu", False), backend.platform == "cpu"
        try:
            return get(computation, devices, compile_options, backend, *args, **kwargs)
        finally:
            key.on_cpu = before

    def patched_options(hash_obj, options, strip_device_assignment=False):
        on_cpu = getattr(key, "on_cpu", False)
        return hash_options(hash_obj, options, strip_device_assignment=strip_device_assignment or on_cpu)

    def patched_config(hash_obj, accelerators):
        if getattr(key, "on_cpu", False):
            return module._hash_devices(hash_obj, accelerators)
        return hash_config(hash_obj, accelerators)

    module.get = patched_get
    module._hash_serialized_compile_options = patched_options
    module._hash_accelerator_config = patched_config


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds jax's cache-key module the usual way and patches it once it has run."""

    def find_spec(self, name, path, target=None):
        if name != _MODULE:
            return None
        sys.meta_path.remove(self)  # one module, once: the usual finders do the finding
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if os.environ.get("DIT_JAX_TEST_SHARED_CACHE", "1") != "0" and _MODULE not in sys.modules:
    sys.meta_path.insert(0, _PatchOnImport())
