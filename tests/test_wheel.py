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
EXTRAS = {k[len('extra_'):]: v.split() for k, v in C.items() if k.startswith('extra_')}  # optional: imported lazily


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
    extra = lambda name: {r.name: str(r.specifier) for r in reqs  # an extra's own (a platform marker is no extra)
                          if r.marker and 'extra' in str(r.marker) and r.marker.evaluate({'extra': name})}
    for name, rs in EXTRAS.items():  # each extra as settings.ini has it, and inside dev (so CI tests it)
        want = {Requirement(s).name: str(Requirement(s).specifier) for s in rs}
        assert extra(name) == want and want.items() <= extra('dev').items(), name
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


def _deps_farm(tmp):
    "A folder of links to this environment's site-packages, minus anything of attention_transfer."
    farm = tmp/'deps'
    farm.mkdir()
    skip = re.compile(rf'^(__editable__.*|{LIB}([-.].*)?|__pycache__|.*\.pth|_virtualenv.*)$', re.I)
    for sp in site.getsitepackages():
        for e in Path(sp).iterdir():
            if skip.match(e.name) or (farm/e.name).exists(): continue
            (farm/e.name).symlink_to(e)
    return farm


@pytest.fixture(scope='module')
def venv(dist, tmp_path_factory):
    whl, _ = dist
    tmp = tmp_path_factory.mktemp('venv')
    env_dir = tmp/'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(env_dir)], check=True)
    py = env_dir/'bin'/'python'
    purelib = Path(subprocess.run([py, '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))'],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (purelib/'_at_test_deps.pth').write_text(str(_deps_farm(tmp)) + '\n')
    r = subprocess.run([sys.executable, '-m', 'pip', '--python', str(py), 'install', '--no-deps', '--no-index',
                        '--no-cache-dir', '-q', str(whl)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    work = tmp/'work'
    work.mkdir()
    env = {'PATH': f"{env_dir/'bin'}:/usr/local/bin:/usr/bin:/bin", 'HOME': str(tmp), 'LANG': 'C.UTF-8',
           'MPLBACKEND': 'Agg', 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '2'), 'MPLCONFIGDIR': str(tmp)}
    return dict(py=py, bin=env_dir/'bin', purelib=purelib, cwd=work, env=env)


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


def _imported_top_level(module_level:bool=False) -> set:
    "Top-level names of every package that attention_transfer/*.py imports (module level or inside functions)."
    import ast
    names = set()
    for f in (ROOT/LIB).glob('*.py'):
        tree = ast.parse(f.read_text(encoding='utf-8'))
        for node in (tree.body if module_level else ast.walk(tree)):
            if isinstance(node, ast.Import): names |= {a.name.split('.')[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level: names.add(node.module.split('.')[0])
    return names - set(sys.stdlib_module_names) - {LIB, '__future__'}


def test_requirements_are_what_the_library_imports():
    "settings.ini `requirements` and extras name every distribution whose packages the library imports, no other."
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
        f"imported by {LIB} but not in settings.ini requirements: {sorted(needed - declared - optional)}"
    assert not declared - needed, f"in settings.ini requirements but never imported by {LIB}: {sorted(declared - needed)}"
    assert not optional - needed, f"in a settings.ini extra, never imported by {LIB}: {sorted(optional - needed)}"
    eager = {canon(dists[m][0]) for m in _imported_top_level(module_level=True)}
    assert not eager & optional, f"an extra imported at module level (import it where used): {eager & optional}"
    assert {'torch', 'torchvision', 'numpy', 'pillow', 'scikit-learn'} <= needed  # the mapping itself works
