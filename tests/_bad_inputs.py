"""The bad-input harness shared by the `test_bad_inputs_*.py` suites: run a console script on bad input (a checkpoint,
data, a flag, an output location, a resume) and assert that it refused the way the project promises:

- a non-zero exit code (2 for flags the parser rejects, 1 for the library's errors, unless a case says otherwise);
- exactly one line on stderr, `PROG: error: ...`, naming the file or flag;
- no traceback anywhere in the output;
- no half-written output: the paths the run would have created do not exist afterwards, and no temporary file is left;
- a previous good run left untouched: every watched folder has the same files, bytes and modes as before.

How a case is run. Starting a console script costs ~3 s of imports (torch, timm) before it reads its first flag, and
there are ~180 cases. So a case runs in a *fork* of the test process, which has the console script's entry function
imported already: a process of its own, with its own exit status, its own stdout and stderr (file descriptors 1 and 2,
so output written below Python is seen too), a timeout that kills it, and nothing it does (environment, current folder,
warnings, torch state, process group) reaching the next case. The child is set up as a fresh console script would be:
the environment of `ENV`, `sys.argv`, Python's default warning filters plus `PYTHONWARNINGS`, warnings and logging
printed to its stderr (not to pytest's recorders), torch's default seed and thread count; `sys.exit(main())` as the
generated console script does it, and an unexpected exception printed as a traceback with exit status 1. The entry
function is found from `settings.ini`'s `console_scripts`, as the installed script finds it.

`real=True` runs the installed console script in a new process as well (`run`), and requires the same exit status and
error line from both: a few such cases per script prove the wiring (entry points, exit status, stderr) end to end, and
that the fork tells the same as the real thing. Good runs (fixtures) use `run`.
"""
import configparser, hashlib, importlib, io, logging, os, signal, stat, subprocess, sys, tempfile, time, traceback, warnings
from pathlib import Path

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS='1', MPLBACKEND='Agg', PYTHONWARNINGS='ignore::UserWarning')


def snapshot(*roots) -> dict:
    "{path: (sha256 or 'dir', mode)} of every file and folder below `roots` (a missing root maps to 'missing')."
    out = {}
    for root in map(Path, roots):
        if not root.exists(): out[str(root)] = ('missing', None); continue
        for p in sorted([root, *root.rglob('*')]):
            st = p.lstat()
            out[str(p)] = ('dir' if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest(), stat.S_IMODE(st.st_mode))
    return out


def run(prog:str, *args, env:dict|None=None, cwd=None, timeout:int=300) -> subprocess.CompletedProcess:
    "Run console script `prog` (at_train, at_eval, at_pretrain, at_demo, ...) with `args`; never raises on failure."
    return subprocess.run([str(BIN/prog), *map(str, args)], capture_output=True, text=True, env={**ENV, **(env or {})},
                          cwd=cwd, timeout=timeout)


def tmp_left(tmp) -> list:
    "What a run left in its temporary folder `tmp`, less torch's compile cache folder (made when torch is imported)."
    tmp = Path(tmp)
    return sorted(str(p.relative_to(tmp)) for p in tmp.rglob('*') if not p.relative_to(tmp).parts[0].startswith('torchinductor_'))


def console_scripts() -> dict:
    "{script: 'module:function'} as `settings.ini` declares them (setup.py's `console_scripts`, split the same way)."
    cfg = configparser.ConfigParser(interpolation=None); cfg.read(ROOT/'settings.ini')
    return dict(s.split('=', 1) for s in cfg['DEFAULT'].get('console_scripts', '').split())


def entry(prog:str):
    "The function console script `prog` calls: `module:attr` from `settings.ini`, imported here."
    spec = console_scripts().get(prog)
    assert spec, f'{prog} is not in settings.ini console_scripts'
    mod, _, attr = spec.partition(':')
    f = importlib.import_module(mod.strip())
    for a in attr.strip().split('.'): f = getattr(f, a)
    return f


# Python's warning filters at start-up (a release build, no -W): the child starts from these, not from pytest's.
_START_FILTERS = [('default', DeprecationWarning, '__main__'), ('ignore', DeprecationWarning, ''),
                  ('ignore', PendingDeprecationWarning, ''), ('ignore', ImportWarning, ''), ('ignore', ResourceWarning, '')]


def _show_warning(message, category, filename, lineno, file=None, line=None):
    "What Python prints for a warning, on the current sys.stderr (pytest's recorder is not the child's stderr)."
    try: (sys.stderr if file is None else file).write(warnings.formatwarning(message, category, filename, lineno, line))
    except (OSError, AttributeError): pass


def _exit_code(value) -> int:
    "The exit status of `sys.exit(value)`: None 0, an int itself, anything else printed on stderr and 1."
    if value is None: return 0
    if isinstance(value, int): return value & 0xFF
    print(value, file=sys.stderr); return 1


def _child(prog:str, main, argv:list, env:dict, cwd, tmp:str, imported:Path) -> int:
    """In the forked child: set up the process as the console script starts, run `sys.exit(main())`, return the exit
    status. The names of the modules the run imported are written to `imported`."""
    had = set(sys.modules)
    os.environ.clear(); os.environ.update(env, TMPDIR=tmp); tempfile.tempdir = tmp
    if cwd is not None: os.chdir(cwd)
    sys.stdin = open(os.devnull)
    sys.stdout = open(1, 'w', encoding='utf-8', closefd=False)
    sys.stderr = open(2, 'w', encoding='utf-8', errors='backslashreplace', closefd=False, buffering=1)
    sys.argv = [str(BIN/prog), *argv]
    warnings.resetwarnings()
    for action, cat, mod in _START_FILTERS: warnings.filterwarnings(action, category=cat, module=mod, append=True)
    warnings._processoptions([o for o in env.get('PYTHONWARNINGS', '').split(',') if o])
    warnings.onceregistry.clear(); warnings.showwarning = _show_warning
    root = logging.getLogger()
    for h in list(root.handlers): root.removeHandler(h)   # pytest's capture handlers: records go to stderr (lastResort)
    root.setLevel(logging.WARNING); logging.disable(logging.NOTSET)
    if 'torch' in sys.modules:
        import torch
        torch.set_num_threads(int(env.get('OMP_NUM_THREADS') or 1)); torch.default_generator.manual_seed(67280421310721)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try: code = _exit_code(main())   # as the generated script does: main() reads sys.argv
    except SystemExit as e: code = _exit_code(e.code)
    except BaseException:
        traceback.print_exc(); code = 1
    try: imported.write_text('\n'.join(sorted(set(sys.modules) - had)))
    except Exception: pass
    for f in (sys.stdout, sys.stderr):
        try: f.flush()
        except Exception: code = code or 120   # as Python does when it cannot flush at exit
    return code


def _preload(names):
    """Import here the modules a run imported (sklearn for `--data digits`, ...), so that the next fork finds them loaded:
    a speed-up only; the first case to import a module still does it in its own process, where anything it prints counts."""
    saved = dict(os.environ); os.environ.update(ENV)   # modules that read the environment on import read the child's
    try:
        for m in names:
            if m in sys.modules or m.startswith('__'): continue
            try:
                with warnings.catch_warnings(): warnings.simplefilter('ignore'); importlib.import_module(m)
            except Exception: pass
    finally: os.environ.clear(); os.environ.update(saved)


def run_forked(prog:str, *args, env:dict|None=None, cwd=None, timeout:int=300, main=None) -> subprocess.CompletedProcess:
    """Run console script `prog` with `args` in a fork of this process (see the module's doc); never raises on failure,
    except `subprocess.TimeoutExpired` once the child is killed after `timeout` s, as `run` does. `tmp_left` on the
    result lists what the run left in its own temporary folder (TMPDIR). `main`: the entry function, for the harness's
    own tests (default: `entry(prog)`)."""
    main, argv = main or entry(prog), list(map(str, args))
    dist = sys.modules.get('torch.distributed')
    assert not (dist and dist.is_available() and dist.is_initialized()), 'a process group is open in the test process: a fork would inherit it'
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile(dir=tmp) as out, tempfile.TemporaryFile(dir=tmp) as err:
        child_tmp = Path(tmp)/'tmp'; child_tmp.mkdir()
        for f in (sys.stdout, sys.stderr):
            try: f.flush()
            except Exception: pass
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 70
            try:
                os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
                code = _child(prog, main, argv, {**ENV, **(env or {})}, cwd, str(child_tmp), Path(tmp)/'imported')
            finally: os._exit(code)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done: break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0)
                raise subprocess.TimeoutExpired([prog, *argv], timeout)
            time.sleep(0.005)
        out.seek(0); err.seek(0)
        r = subprocess.CompletedProcess([prog, *argv], os.waitstatus_to_exitcode(status),
                                        out.read().decode('utf-8', 'replace'), err.read().decode('utf-8', 'replace'))
        r.tmp_left = tmp_left(child_tmp)
        if (Path(tmp)/'imported').is_file(): _preload((Path(tmp)/'imported').read_text().split())
    return r


def _check(r, prog, args, how, names, code, watch, before, absent) -> str:
    "The assertions of `assert_refused` on one run's result; returns the error line."
    shown = f"\n$ {prog} {' '.join(map(str, args))}  [{how}]\nexit {r.returncode}\nstdout: {r.stdout[-1500:]}\nstderr: {r.stderr[-3000:]}"
    assert r.returncode != 0, 'accepted bad input' + shown
    if code is not None: assert r.returncode == code, f'exit {r.returncode}, expected {code}' + shown
    assert 'Traceback' not in r.stderr + r.stdout, 'traceback' + shown
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, f'{len(lines)} stderr lines, expected one' + shown
    assert lines[0].startswith(f'{prog}') and ': error: ' in lines[0], 'not a `prog: error:` line' + shown
    for n in names: assert str(n) in lines[0], f'{n!r} not named in the error line' + shown
    assert snapshot(*watch) == before, 'a watched file or folder changed' + shown
    for p in absent: assert not Path(p).exists(), f'{p} was created' + shown
    assert not getattr(r, 'tmp_left', None), f'left in its temporary folder: {r.tmp_left}' + shown
    return lines[0]


def assert_refused(prog:str, *args, names=(), code:int|None=None, watch=(), absent=(), env:dict|None=None, cwd=None,
                   timeout:int=300, real:bool=False) -> str:
    """Run `prog *args` and assert a clean refusal: exit `code` (any non-zero when None), one stderr line
    `prog: error: ...` that contains every string in `names` (the flag or file at fault), no traceback in stdout or
    stderr, the folders/files in `watch` byte-for-byte and mode-for-mode unchanged, none of `absent` created, and
    nothing left in the run's temporary folder. Runs in a fork (`run_forked`); `real`: also as the installed console
    script in a new process (`run`), which must refuse the same way with the same line. Returns the error line."""
    before = snapshot(*watch)
    f = run_forked(prog, *args, env=env, cwd=cwd, timeout=timeout)
    line = _check(f, prog, args, 'fork', names, code, watch, before, absent)
    if real:
        with tempfile.TemporaryDirectory() as tmp:
            r = run(prog, *args, env={**(env or {}), 'TMPDIR': tmp}, cwd=cwd, timeout=timeout)
            r.tmp_left = tmp_left(tmp)
        same = (_check(r, prog, args, 'process', names, code, watch, before, absent), r.returncode) == (line, f.returncode)
        assert same, f'the fork and the process differ:\nfork: exit {f.returncode}, {line}\nprocess: exit {r.returncode}, {r.stderr}'
    return line
