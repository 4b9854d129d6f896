"""Writing files so that a crash never leaves one half-written, and never overwriting one."""
import os


def write_atomically(path: str, text: str) -> None:
  """Writes `path` whole or not at all."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def unused_path(stem: str, extension: str = "") -> str:
  """`stem + extension`, or the first free `stem.N + extension` (N = 1, 2, ...)."""
  path, n = stem + extension, 1
  while os.path.exists(path):
    path, n = f"{stem}.{n}{extension}", n + 1
  return path
