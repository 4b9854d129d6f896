"""Test session setup: one persistent XLA compilation cache for every test and subprocess.

The tests train the same tiny models in many places (in-process and through
train.py/eval.py subprocesses); compiling each program once and reusing it
from the cache keeps the suite within CI's time on a 2-core CPU.
"""
import os
import tempfile

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "iiae_jax_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
