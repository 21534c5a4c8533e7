"""The wheel: built from a clean sdist (`python -m build`: nothing but the package gets in), metadata taken from
settings.ini, and working in a fresh virtual environment that sees the wheel and the dependencies, never the repo.

The fresh venv gets no copy of torch & co. (gigabytes): a `.pth` file adds a folder of links to this environment's
installed dependencies, leaving out every trace of attention_transfer (the editable install's finder, its .pth and
dist-info). Checks run from a folder outside the repo, with a minimal environment, so the repo cannot be imported
by accident; each asserts that `attention_transfer` came from the venv's site-packages."""
import configparser, json, os, re, site, subprocess, sys, sysconfig, tarfile, textwrap, zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
CFG = configparser.ConfigParser(delimiters=['='])
CFG.read(ROOT/'settings.ini', encoding='utf-8')
C = CFG['DEFAULT']
LIB = C['lib_name']
SCRIPTS = dict(s.split('=', 1) for s in C.get('console_scripts', '').split())
# optional extras (setup.py): every `NAME_requirements` key but dev's, e.g. data = webdataset datasets
EXTRAS = {k[:-len('_requirements')]: v.split() for k, v in C.items()
          if k.endswith('_requirements') and k != 'dev_requirements'}


@pytest.fixture(scope='module')
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp('dist')
    r = subprocess.run([sys.executable, '-m', 'build', '--no-isolation', '--outdir', str(out), str(ROOT)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    whl, = out.glob('*.whl')
    sdist, = out.glob('*.tar.gz')
    return whl, sdist


def _metadata(whl):
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith('.dist-info/METADATA'))
        eps = next((n for n in z.namelist() if n.endswith('.dist-info/entry_points.txt')), None)
        ep = configparser.ConfigParser(); ep.optionxform = str
        if eps: ep.read_string(z.read(eps).decode())
        return Parser().parsestr(z.read(meta).decode()), ep, z.namelist()


def test_wheel_metadata(dist):
    whl, _ = dist
    m, eps, names = _metadata(whl)
    assert whl.name == f"{LIB}-{C['version']}-py3-none-any.whl"
    assert (m['Name'], m['Version'], m['Summary']) == (LIB, C['version'], C['description'])
    assert m['License'] == 'Apache-2.0' and any(n.endswith('licenses/LICENSE') for n in names)
    assert m['Requires-Python'] == f">={C['min_python']}" and C['min_python'] >= '3.10'
    urls = dict(u.split(', ', 1) for u in m.get_all('Project-URL'))
    assert urls['Source'] == C['git_url'] and urls['Documentation'] == C['doc_host'] + C['doc_baseurl']
    assert m['Description-Content-Type'] == 'text/markdown' and m.get_payload().startswith(f'# {LIB}')
    reqs = [Requirement(r) for r in m.get_all('Requires-Dist')]
    runtime = {r.name: r for r in reqs if not (r.marker and 'extra' in str(r.marker))}   # platform markers count
    assert {r.name: str(r.specifier) for r in runtime.values()} == \
           {Requirement(s).name: str(Requirement(s).specifier) for s in C['requirements'].split()}
    no_floor = [n for n, r in runtime.items() if not any(s.operator in ('>=', '==', '~=', '>') for s in r.specifier)]
    assert not no_floor, f'runtime requirements without a lower bound: {no_floor}'
    assert any(r.marker and 'dev' in str(r.marker) for r in reqs), 'the dev extra is missing'
    got = dict(eps['console_scripts']) if eps.has_section('console_scripts') else {}
    assert got == SCRIPTS
    # only the package: no notebooks, tests, docs or build leftovers
    assert {n.split('/')[0] for n in names} == {LIB, f"{LIB}-{C['version']}.dist-info"}
    assert sorted(n for n in names if n.startswith(f'{LIB}/')) == \
           sorted(f'{LIB}/{p.name}' for p in (ROOT/LIB).glob('*.py'))


def test_sdist_builds_anywhere(dist):
    "The sdist carries what setup.py reads (settings.ini, README.md) and the licence: the wheel was built from it."
    _, sdist = dist
    with tarfile.open(sdist) as t: names = {n.split('/', 1)[1] for n in t.getnames() if '/' in n}
    assert {'settings.ini', 'setup.py', 'pyproject.toml', 'README.md', 'LICENSE', f'{LIB}/__init__.py'} <= names
    assert not any(n.startswith(('nbs/', '.ci/', '_docs/', '_proc/')) for n in names)


def _extra_entries() -> set:
    "The site-packages entries (packages, modules, dist-info) of the optional extras' distributions."
    from importlib.metadata import distribution
    return {Path(f).parts[0] for rs in EXTRAS.values() for r in rs for f in distribution(Requirement(r).name).files or []
            if not str(f).startswith('..')}


def _deps_farm(tmp, without:set=frozenset()):
    "A folder of links to this environment's site-packages, minus anything of attention_transfer (and `without`)."
    farm = tmp/'deps'
    farm.mkdir()
    skip = re.compile(rf'^(__editable__.*|{LIB}([-.].*)?|__pycache__|.*\.pth|_virtualenv.*)$', re.I)
    for sp in site.getsitepackages():
        for e in Path(sp).iterdir():
            if skip.match(e.name) or e.name in without or (farm/e.name).exists(): continue
            (farm/e.name).symlink_to(e)
    return farm


def _make_venv(whl, tmp, without:set=frozenset()) -> dict:
    "A fresh venv with the wheel installed and this environment's dependencies linked in (minus `without`)."
    env_dir = tmp/'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(env_dir)], check=True)
    py = env_dir/'bin'/'python'
    purelib = Path(subprocess.run([py, '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))'],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (purelib/'_at_test_deps.pth').write_text(str(_deps_farm(tmp, without)) + '\n')
    r = subprocess.run([sys.executable, '-m', 'pip', '--python', str(py), 'install', '--no-deps', '--no-index',
                        '--no-cache-dir', '-q', str(whl)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    work = tmp/'work'
    work.mkdir()
    env = {'PATH': f"{env_dir/'bin'}:/usr/local/bin:/usr/bin:/bin", 'HOME': str(tmp), 'LANG': 'C.UTF-8',
           'MPLBACKEND': 'Agg', 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '2'), 'MPLCONFIGDIR': str(tmp)}
    return dict(py=py, bin=env_dir/'bin', purelib=purelib, cwd=work, env=env)


@pytest.fixture(scope='module')
def venv(dist, tmp_path_factory):
    return _make_venv(dist[0], tmp_path_factory.mktemp('venv'))


@pytest.fixture(scope='module')
def bare_venv(dist, tmp_path_factory):
    "The wheel without its optional extras installed (`pip install attention_transfer`, no `[data]`)."
    return _make_venv(dist[0], tmp_path_factory.mktemp('bare'), _extra_entries())


def _run(v, args, **kw):
    return subprocess.run(args, cwd=v['cwd'], env=v['env'], capture_output=True, text=True, timeout=300, **kw)


def _py(v, code):
    r = _run(v, [str(v['py']), '-c', textwrap.dedent(code)])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_import_from_wheel_not_repo(venv):
    out = json.loads(_py(venv, f"""
        import importlib, importlib.metadata as md, json, pkgutil, sys
        import {LIB}
        mods = [m.name for m in pkgutil.iter_modules({LIB}.__path__, '{LIB}.')]
        for m in mods: importlib.import_module(m)   # every module imports with only the declared dependencies
        print(json.dumps(dict(file={LIB}.__file__, version={LIB}.__version__, dist=md.version('{LIB}'),
                              dists=[d.metadata['Name'] for d in md.distributions() if d.metadata['Name'] == '{LIB}'],
                              mods=mods, path=sys.path)))
    """).splitlines()[-1])
    assert Path(out['file']).resolve().is_relative_to(venv['purelib'].resolve()), out['file']
    assert out['version'] == out['dist'] == C['version'] and out['dists'] == [LIB]
    assert not [p for p in out['path'] if p and Path(p).resolve().is_relative_to(ROOT)], out['path']
    assert f'{LIB}.attention' in out['mods']


def test_attention_copy_forward_from_wheel(venv, dist):
    "A tiny attention-copy forward: a student that copies its own twin's attention reproduces the twin exactly."
    _, _, names = _metadata(dist[0])
    if f'{LIB}/transfer.py' not in names: pytest.skip(f'{LIB}.transfer (AttentionCopy, issue 3) is not in the wheel yet')
    out = _py(venv, f"""
        import copy, torch, timm
        from {LIB}.transfer import AttentionCopy
        import {LIB}
        torch.manual_seed(0)
        teacher = timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=8, depth=2, num_classes=10).eval()
        x = torch.randn(2, 3, 32, 32)
        twin = AttentionCopy(teacher, copy.deepcopy(teacher)).eval()
        other = AttentionCopy(teacher, timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=8, depth=2,
                                                           num_classes=10)).eval()
        with torch.no_grad(): want, got, y = teacher(x), twin(x), other(x)
        assert got.shape == y.shape == (2, 10) and torch.isfinite(y).all()
        torch.testing.assert_close(got, want)
        print('ok', {LIB}.__file__)
    """)
    assert out.startswith('ok') and str(venv['purelib']) in out


@pytest.fixture(scope='module')
def helps(venv):
    "`SCRIPT --help` of every console script the wheel installed, run side by side: {name: (rc, output)}."
    procs = {s: subprocess.Popen([str(venv['bin']/s), '--help'], cwd=venv['cwd'], env=venv['env'], text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for s in SCRIPTS if (venv['bin']/s).exists()}
    return {s: (p.wait(300), p.stdout.read()) for s, p in procs.items()}


@pytest.mark.parametrize('script', ['at_train'] + sorted(set(SCRIPTS) - {'at_train'}))
def test_console_script_help(helps, script):
    if script not in SCRIPTS: pytest.skip(f'{script} is not in settings.ini console_scripts yet (issue 4)')
    assert script in helps, f'{script} not installed by the wheel'
    rc, out = helps[script]
    assert rc == 0 and 'usage' in out.lower(), out[-3000:]


def test_requirements_satisfied(venv):
    "pip check: the installed dependency versions satisfy the wheel's requirement bounds."
    r = subprocess.run([sys.executable, '-m', 'pip', '--python', str(venv['py']), 'check'], capture_output=True,
                       text=True, cwd=venv['cwd'])
    ours = [l for l in r.stdout.splitlines() if re.match(rf'{LIB}|{LIB.replace("_", "-")}', l, flags=re.I)]
    assert not ours, '\n'.join(ours)


def _at_import(tree):
    "The nodes of a module that run when it is imported: all but the insides of functions."
    import ast
    todo = list(tree.body)
    while todo:
        n = todo.pop()
        yield n
        if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)): todo.extend(ast.iter_child_nodes(n))


def _imported_top_level(at_import:bool=False) -> set:
    "Top-level names of every package that attention_transfer/*.py imports (anywhere, or only when it is imported)."
    import ast
    names = set()
    for f in (ROOT/LIB).glob('*.py'):
        tree = ast.parse(f.read_text(encoding='utf-8'))
        for node in (_at_import(tree) if at_import else ast.walk(tree)):
            if isinstance(node, ast.Import): names |= {a.name.split('.')[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level: names.add(node.module.split('.')[0])
    return names - set(sys.stdlib_module_names) - {LIB, '__future__'}


def test_requirements_are_what_the_library_imports():
    "settings.ini `requirements` and the optional extras name every distribution the library imports, and no other."
    from importlib.metadata import packages_distributions
    dists = packages_distributions()  # import name -> distributions providing it (PIL -> pillow, sklearn -> scikit-learn)
    canon = lambda n: re.sub(r'[-_.]+', '-', n).lower()
    imported = _imported_top_level()
    unknown = sorted(m for m in imported if m not in dists)
    assert not unknown, f'imported but not installed here, so not mappable to a distribution: {unknown}'
    needed = {canon(dists[m][0]) for m in imported}
    declared = {canon(Requirement(s).name) for s in C['requirements'].split()}
    optional = {canon(Requirement(s).name) for rs in EXTRAS.values() for s in rs}
    assert not needed - declared - optional, \
        f"imported by {LIB} but in no requirement nor extra of settings.ini: {sorted(needed - declared - optional)}"
    assert not declared - needed, f"in settings.ini requirements but never imported by {LIB}: {sorted(declared - needed)}"
    assert not optional - needed, f"an extra of settings.ini that {LIB} never imports: {sorted(optional - needed)}"
    assert {'torch', 'torchvision', 'numpy', 'pillow', 'scikit-learn'} <= needed  # the mapping itself works


def test_extras_are_imported_only_where_used():
    "An optional extra is imported inside the functions that need it, never when a module is imported."
    from importlib.metadata import packages_distributions
    dists = packages_distributions()
    canon = lambda n: re.sub(r'[-_.]+', '-', n).lower()
    optional = {canon(Requirement(s).name) for rs in EXTRAS.values() for s in rs}
    eager = sorted(m for m in _imported_top_level(at_import=True) if m in dists and canon(dists[m][0]) in optional)
    assert EXTRAS.get('data'), 'settings.ini has no data_requirements (the data extra)'
    assert not eager, f"optional extras imported when a module of {LIB} is imported: {eager}"


def test_optional_extras_in_wheel(dist):
    "Each extra of settings.ini is an extra of the wheel, and the dev extra (what CI installs) includes them all."
    m, _, _ = _metadata(dist[0])
    assert 'data' in EXTRAS, 'settings.ini has no data_requirements (pip install "attention_transfer[data]")'
    provided = set(m.get_all('Provides-Extra') or [])
    assert set(EXTRAS) | {'dev'} <= provided, provided
    reqs = [Requirement(r) for r in m.get_all('Requires-Dist')]
    of = lambda extra: {str(r).split(';')[0].strip() for r in reqs
                        if r.marker and 'extra' in str(r.marker) and r.marker.evaluate({'extra': extra})}
    for name, rs in EXTRAS.items():
        want = {str(Requirement(r)) for r in rs}
        assert of(name) == want, (name, of(name))
        assert want <= of('dev'), f"the dev extra lacks {sorted(want - of('dev'))} of extra {name}"


def test_works_without_the_extras(bare_venv):
    "Without the extras every module imports, and a dataset that needs one is refused in one line naming the extra."
    out = _py(bare_venv, f"""
        import importlib, pkgutil, {LIB}
        for m in pkgutil.iter_modules({LIB}.__path__, '{LIB}.'): importlib.import_module(m.name)
        for pkg in ('webdataset', 'datasets'):
            try: importlib.import_module(pkg); print('installed', pkg)
            except ImportError: pass
        print('ok')
    """)
    assert out.strip() == 'ok', out  # the extras are really absent here
    for name in ('wds/toy', 'hfds/someone/something'):
        r = _run(bare_venv, [str(bare_venv['bin']/'at_train'), '--model', 'vit_nano_patch4_32', '--dataset', name,
                             '--data_path', '.', '--epochs', '1', '--output_dir', 'out'])
        lines = (r.stdout + r.stderr).strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1, r.stdout + r.stderr
        assert 'pip install "attention_transfer[data]"' in lines[0] and name in lines[0], lines[0]
        assert not (bare_venv['cwd']/'out').exists()
