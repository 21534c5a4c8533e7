"""The bad-input harness itself (`tests/_bad_inputs.py`): a case run in a fork sees what a console script's own process
would show (tracebacks, warnings, log records, output below Python, a `sys.exit` message, the exit status), is killed
at its timeout, leaves no state behind in the test process, and its entry functions are the ones `settings.ini`
declares. Fake entry functions, no torch: each test takes milliseconds."""
import logging, os, subprocess, sys, tempfile, time, warnings
from pathlib import Path
import pytest
from _bad_inputs import BIN, _check, console_scripts, entry, run_forked


def fork(main, *args, **kw): return run_forked('at_fake', *args, main=main, **kw)

def refuse(): print('at_fake: error: --flag is bad', file=sys.stderr); sys.exit(1)


def test_a_clean_refusal_passes():
    r = fork(refuse, '--flag', 'x')
    assert (r.returncode, r.stderr, r.tmp_left) == (1, 'at_fake: error: --flag is bad\n', [])
    assert _check(r, 'at_fake', (), 'fork', ['--flag'], 1, (), {}, ()) == 'at_fake: error: --flag is bad'


def test_an_unexpected_exception_is_a_traceback_and_exit_1():
    def boom(): raise ValueError('deep inside')
    r = fork(boom)
    assert r.returncode == 1 and r.stderr.startswith('Traceback (most recent call last):') and 'ValueError: deep inside' in r.stderr
    with pytest.raises(AssertionError, match='traceback'): _check(r, 'at_fake', (), 'fork', [], None, (), {}, ())


@pytest.mark.parametrize('what', ['warning', 'log record', 'fd 2', 'second line', 'no name'])
def test_anything_more_on_stderr_fails_the_case(what):
    def noisy():
        if what == 'warning': warnings.warn('this will change', FutureWarning)
        if what == 'log record': logging.getLogger('some.library').warning('careful')
        if what == 'fd 2': os.write(2, b'written below Python\n')
        if what == 'second line': print('at_fake: error: and again', file=sys.stderr)
        print('at_fake: error: ' + ('bad value' if what == 'no name' else '--flag is bad'), file=sys.stderr); sys.exit(1)
    r = fork(noisy)
    with pytest.raises(AssertionError, match='not named' if what == 'no name' else r'[23] stderr lines'):
        _check(r, 'at_fake', (), 'fork', ['--flag'], 1, (), {}, ())


def test_python_start_up_warning_filters():
    "UserWarning ignored (ENV's PYTHONWARNINGS, as for the real process), DeprecationWarning ignored outside __main__, FutureWarning shown."
    def warn():
        warnings.warn('u', UserWarning); warnings.warn('d', DeprecationWarning); warnings.warn('f', FutureWarning)
    r = fork(warn)
    assert r.returncode == 0 and 'FutureWarning: f' in r.stderr and 'UserWarning: u' not in r.stderr and 'DeprecationWarning: d' not in r.stderr, r.stderr


@pytest.mark.parametrize('ret, code, err', [(None, 0, ''), (3, 3, ''), ('a message', 1, 'a message\n')])
def test_exit_status_as_the_console_script_wrapper_gives_it(ret, code, err):
    "The generated script runs `sys.exit(main())`."
    r = fork(lambda: ret)
    assert (r.returncode, r.stderr) == (code, err)


def test_a_case_that_hangs_is_killed():
    t = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired): fork(lambda: time.sleep(60), timeout=1)
    assert time.monotonic() - t < 10


def test_temporary_files_left_are_reported():
    def leave(): tempfile.mkstemp(suffix='.part'); refuse()
    r = fork(leave)
    assert len(r.tmp_left) == 1 and r.tmp_left[0].endswith('.part')
    with pytest.raises(AssertionError, match='temporary folder'): _check(r, 'at_fake', (), 'fork', [], 1, (), {}, ())


def test_nothing_leaks_into_the_test_process(tmp_path):
    before = (dict(os.environ), os.getcwd(), list(warnings.filters), list(sys.argv), logging.getLogger().handlers[:])
    def meddle():
        assert sys.argv == [str(BIN/'at_fake'), '-x'] and os.environ['OMP_NUM_THREADS'] == '1' and os.getcwd() == str(tmp_path)
        os.environ['WORLD_SIZE'] = '2'; os.chdir('/'); warnings.simplefilter('error'); sys.argv.append('more')
        logging.getLogger().addHandler(logging.NullHandler()); refuse()
    r = fork(meddle, '-x', cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert (dict(os.environ), os.getcwd(), list(warnings.filters), list(sys.argv), logging.getLogger().handlers[:]) == before


def test_entry_functions_come_from_settings_ini():
    "Every script the bad-input suites run is declared in settings.ini and resolves to a function (as the installed one does)."
    scripts = console_scripts()
    for prog in ('at_train', 'at_eval', 'at_pretrain', 'at_demo'):
        assert prog in scripts and callable(entry(prog)), prog
    with pytest.raises(AssertionError, match='not in settings.ini'): entry('at_nothing')
