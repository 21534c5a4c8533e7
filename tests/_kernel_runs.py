"""Shared by test_kernel.py and test_docs.py: every CI notebook executed once under a Jupyter kernel per pytest run."""
import functools, os, sys
from pathlib import Path

from fastcore.xtras import working_directory

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'.ci'))
import nbexec  # noqa: E402  (.ci/nbexec.py)


def ci_notebooks() -> list[Path]:
    with working_directory(ROOT): return nbexec.ci_notebooks()


@functools.cache
def runs() -> dict:
    "{notebook path: nbexec.Executed}, `AT_NB_WORKERS` (default 2) kernels at a time."
    with working_directory(ROOT):
        return nbexec.execute_all(n_workers=int(os.environ.get('AT_NB_WORKERS', '2')))
