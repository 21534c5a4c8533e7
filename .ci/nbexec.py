"""Run notebooks as a person in JupyterLab would: a real ipykernel driven by nbclient, top to bottom.

The cells run are exactly those `nbdev_test` runs: the notebooks nbdev_test picks (nbglob's rules and `.notest`
folders), no notebook whose frontmatter says `skip_exec`, and no cell that has `#| eval: false`, a flag listed in
settings.ini's `tst_flags` (nbdev splits it on whitespace), or a call to `nbdev_export(`. Unlike nbdev_test, nothing
runs in-process: the kernel starts fresh in the notebook's folder, with matplotlib's inline backend (figures become
outputs) and without `IN_TEST`, so state that execnb's shell would hide (imports from the test driver, a leftover
`MPLBACKEND`, the driver's working directory) shows up here.

Used by `tests/test_kernel.py` (one pytest per notebook) and by `.ci/docsite.py` (the executed notebooks are what
the docs site renders). Run it directly to execute notebooks: `python .ci/nbexec.py [NOTEBOOK ...]`.
"""
from __future__ import annotations
import asyncio, os, sys, time, warnings
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from fastcore.basics import str2bool
from execnb.nbio import read_nb
from nbdev.config import get_config
from nbdev.doclinks import nbglob
from nbdev.frontmatter import FrontmatterProc
from nbdev.process import NBProcessor, extract_directives, nb_lang
from nbdev.test import _keep_file

SKIP_TAG = 'skip-execution'  # nbclient's `skip_cells_with_tag` default


def ci_notebooks(path=None) -> list[Path]:
    "The notebooks `nbdev_test` runs, sorted as it sorts them."
    return [f.absolute() for f in sorted(nbglob(path, as_path=True)) if _keep_file(f, '.notest')]


def skip_flags() -> set[str]:
    "The cell flags nbdev_test skips: settings.ini `tst_flags`, split as nbdev splits it (on whitespace)."
    return set(get_config().tst_flags.split())


def skip_plan(path, flags=None):
    "`None` when nbdev_test skips the whole notebook, else the indices of the code cells it would not run."
    path = Path(path)
    flags = skip_flags() if flags is None else set(flags)
    proc = NBProcessor(path, procs=FrontmatterProc, process=True).nb
    if str2bool(getattr(proc, 'frontmatter_', {}).get('skip_exec', False)) or nb_lang(proc) != 'python': return None
    skip = set()
    for i, cell in enumerate(read_nb(path).cells):  # same cell order as nbformat's
        if cell.cell_type != 'code': continue
        d = extract_directives(cell, remove=False)
        if ('nbdev_export' + '(' in cell.source or d.get('eval:', [''])[0].lower() == 'false' or flags & d.keys()):
            skip.add(i)
    return skip


@dataclass
class Executed:
    path: Path                 # the source notebook
    nb: nbformat.NotebookNode  # the notebook with outputs (up to the failing cell when `error` is set)
    error: str | None          # why it failed, None when it ran through
    seconds: float
    skipped: list[int]         # indices of the code cells not run (flags, eval: false, nbdev_export)
    ran: bool                  # False when the notebook is skip_exec


def kernel_env() -> dict:
    "The environment a JupyterLab kernel would see: no test-driver variables that change a notebook's behaviour."
    env = dict(os.environ)
    for k in ('MPLBACKEND', 'IN_TEST', 'PYTEST_CURRENT_TEST'): env.pop(k, None)
    env.setdefault('PYDEVD_DISABLE_FILE_VALIDATION', '1')  # quiet debugpy's frozen-modules note on kernel stderr
    return env


async def execute(path, timeout: int = 600, flags=None) -> Executed:
    "Execute the notebook at `path` under a fresh python3 ipykernel, skipping what nbdev_test skips."
    path = Path(path).absolute()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # nbformat's MissingIDFieldWarning: nbdev_clean strips cell ids
        nb = nbformat.read(path, as_version=4)
    plan = skip_plan(path, flags)
    if plan is None: return Executed(path, nb, None, 0., [], False)
    for i in plan:
        tags = nb.cells[i].setdefault('metadata', {}).setdefault('tags', [])
        if SKIP_TAG not in tags: tags.append(SKIP_TAG)
    client = NotebookClient(nb, timeout=timeout, kernel_name='python3', allow_errors=False,
                            skip_cells_with_tag=SKIP_TAG, resources={'metadata': {'path': str(path.parent)}},
                            extra_arguments=['--IPKernelApp.log_level=ERROR'])  # no TCP-without-encryption notice
    start, error = time.time(), None
    try: await client.async_execute(env=kernel_env())
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as e: error = f'{type(e).__name__}: {e}'
    for i in plan:  # leave the notebook's own metadata as it was
        md = nb.cells[i].metadata
        md.tags.remove(SKIP_TAG)
        if not md.tags: del md['tags']
    return Executed(path, nb, error, time.time() - start, sorted(plan), True)


async def _execute_all(paths, n_workers, timeout, flags):
    sem = asyncio.Semaphore(max(1, n_workers))
    async def one(p):
        async with sem: return await execute(p, timeout, flags)
    return await asyncio.gather(*(one(p) for p in paths))


def execute_all(paths=None, n_workers: int = 2, timeout: int = 600, flags=None) -> dict[Path, Executed]:
    "Execute `paths` (default: every CI notebook), `n_workers` kernels at a time; {path: Executed}."
    paths = ci_notebooks() if paths is None else [Path(p).absolute() for p in paths]
    return {r.path: r for r in asyncio.run(_execute_all(paths, n_workers, timeout, flags))}


if __name__ == '__main__':
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('notebooks', nargs='*', help='default: every notebook nbdev_test runs')
    ap.add_argument('--n_workers', type=int, default=2)
    a = ap.parse_args()
    res = execute_all(a.notebooks or None, a.n_workers)
    for r in res.values():
        state = 'skip_exec' if not r.ran else ('FAILED' if r.error else 'ok')
        print(f'{state:9} {r.seconds:6.1f}s  {r.path.relative_to(Path.cwd()) if r.path.is_relative_to(Path.cwd()) else r.path}'
              f'  ({len(r.skipped)} cells skipped)')
        if r.error: print(r.error, file=sys.stderr)
    sys.exit(any(r.error for r in res.values()))
