"""Every notebook CI runs also runs top to bottom under a real Jupyter kernel (nbclient + ipykernel), as a person
pressing Shift-Enter in JupyterLab would: a fresh kernel in the notebook's folder, inline matplotlib, no IN_TEST.
The cells skipped are exactly those nbdev_test skips (see .ci/nbexec.py); one test per notebook."""
import json, re

import pytest
from fastcore.xtras import working_directory
from nbdev.config import get_config

from _kernel_runs import ROOT, ci_notebooks, nbexec, runs

NOTEBOOKS = [p.relative_to(ROOT) for p in ci_notebooks()]


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=[p.as_posix() for p in NOTEBOOKS])
def test_notebook_runs_under_jupyter_kernel(nb):
    r = runs()[ROOT/nb]
    if not r.ran: pytest.skip('skip_exec in its frontmatter: nbdev_test does not run it either')
    assert r.error is None, f'{nb} failed under a Jupyter kernel ({r.seconds:.0f}s):\n{r.error}'
    not_run = [i for i, c in enumerate(r.nb.cells) if c.cell_type == 'code' and c.source.strip()
               and i not in r.skipped and c.get('execution_count') is None]
    assert not not_run, f'{nb}: cells {not_run} were neither run nor skipped by nbdev_test rules'


def test_tst_flags_are_directive_names():
    "nbdev_test splits settings.ini `tst_flags` on whitespace: 'slow|cuda' would be one flag that no cell carries."
    with working_directory(ROOT): flags = get_config().tst_flags.split()
    assert flags and all(re.fullmatch(r'[\w-]+', f) for f in flags), \
        f"settings.ini tst_flags = {' '.join(flags)!r}: separate the flags with spaces (e.g. 'slow cuda')"


def _nb(tmp_path, cells, name='t.ipynb', fm=None):
    md = [{'cell_type': 'markdown', 'metadata': {}, 'source': '# T\n\n> t' + (f'\n\n- skip_exec: {fm}' if fm else '')}]
    nb = {'cells': md + [{'cell_type': 'code', 'metadata': {}, 'source': s, 'outputs': [], 'execution_count': None}
                         for s in cells],
          'metadata': {'kernelspec': {'name': 'python3', 'language': 'python', 'display_name': 'Python 3'}},
          'nbformat': 4, 'nbformat_minor': 5}
    (tmp_path/name).write_text(json.dumps(nb))
    return tmp_path/name


def test_skip_plan_matches_nbdev_test_rules(tmp_path):
    p = _nb(tmp_path, ['x = 1', '#| slow\nraise Exception', '#| cuda\nraise Exception', '#|eval: false\nraise Exception',
                       '#| eval:false\nraise Exception', 'import nbdev; nbdev.nbdev_export()', '#| hide\ny = x + 1',
                       '#| export\ndef f(): return 2', 'assert f() == 2 and y == 2'])
    with working_directory(ROOT): assert nbexec.skip_plan(p, flags={'slow', 'cuda'}) == {2, 3, 4, 5, 6}
    with working_directory(ROOT): assert nbexec.skip_plan(p, flags={'cuda'}) == {3, 4, 5, 6}
    with working_directory(ROOT): assert nbexec.skip_plan(_nb(tmp_path, ['1'], 's.ipynb', fm='true'), flags=set()) is None


def test_kernel_runs_what_a_person_runs(tmp_path):
    "A fresh kernel in the notebook's folder, inline figures, no IN_TEST/MPLBACKEND from the driver; errors surface."
    p = _nb(tmp_path, ['import os, matplotlib\nprint(os.getcwd(), os.environ.get("IN_TEST"), matplotlib.get_backend())',
                       '#| slow\nraise Exception("must be skipped")',
                       'import matplotlib.pyplot as plt\nplt.plot([1, 2]);'])
    with working_directory(ROOT): r = nbexec.execute_all([p], flags={'slow'})[p]
    assert r.error is None and r.skipped == [2]
    out = r.nb.cells[1].outputs[0].text.split()
    assert out[0] == str(tmp_path) and out[1] == 'None' and 'inline' in out[2]
    assert any('image/png' in o.get('data', {}) for o in r.nb.cells[3].outputs)
    bad = _nb(tmp_path, ['x = 1', 'undefined_name'], 'bad.ipynb')
    with working_directory(ROOT): r = nbexec.execute_all([bad], flags=set())[bad]
    assert r.error and 'NameError' in r.error
