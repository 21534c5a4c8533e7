"""The bad-input harness shared by the `test_bad_inputs_*.py` suites: run a console script on bad input (a checkpoint,
data, a flag, an output location, a resume) and assert that it refused the way the project promises:

- a non-zero exit code (2 for flags the parser rejects, 1 for the library's errors, unless a case says otherwise);
- exactly one line on stderr, `PROG: error: ...`, naming the file or flag;
- no traceback anywhere in the output;
- no half-written output: the paths the run would have created do not exist afterwards;
- a previous good run left untouched: every watched folder has the same files, bytes and modes as before.
"""
import hashlib, os, stat, subprocess, sys
from pathlib import Path

BIN = Path(sys.executable).parent
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


def assert_refused(prog:str, *args, names=(), code:int|None=None, watch=(), absent=(), env:dict|None=None, cwd=None,
                   timeout:int=300) -> str:
    """Run `prog *args` and assert a clean refusal: exit `code` (any non-zero when None), one stderr line
    `prog: error: ...` that contains every string in `names` (the flag or file at fault), no traceback in stdout or
    stderr, the folders/files in `watch` byte-for-byte and mode-for-mode unchanged, and none of `absent` created.
    Returns the error line."""
    before = snapshot(*watch)
    r = run(prog, *args, env=env, cwd=cwd, timeout=timeout)
    shown = f"\n$ {prog} {' '.join(map(str, args))}\nexit {r.returncode}\nstdout: {r.stdout[-1500:]}\nstderr: {r.stderr[-3000:]}"
    assert r.returncode != 0, 'accepted bad input' + shown
    if code is not None: assert r.returncode == code, f'exit {r.returncode}, expected {code}' + shown
    assert 'Traceback' not in r.stderr + r.stdout, 'traceback' + shown
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, f'{len(lines)} stderr lines, expected one' + shown
    assert lines[0].startswith(f'{prog}') and ': error: ' in lines[0], 'not a `prog: error:` line' + shown
    for n in names: assert str(n) in lines[0], f'{n!r} not named in the error line' + shown
    assert snapshot(*watch) == before, 'a watched file or folder changed' + shown
    for p in absent: assert not Path(p).exists(), f'{p} was created' + shown
    return lines[0]
