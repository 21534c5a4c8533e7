"""`at_demo` as a user runs it, at a toy size: the console script in a subprocess with two worker processes, the files
it writes (results.json's exact shape, the figures), reusing a teacher, an ImageFolder, and one-line failures (these in
a fork of the test process, `tests/_bad_inputs.py`, but for one in a process of its own)."""
import json, os, subprocess, sys
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image
from _bad_inputs import run_forked

BIN = Path(sys.executable).parent
ENV = dict(os.environ, OMP_NUM_THREADS='1', MPLBACKEND='Agg')
TINY = ['--epochs', '1', '--pretrain_epochs', '1', '--n_labelled', '100', '--depth', '4', '--batch_size', '50']
KEYS = ['scratch', 'finetune', 'copy', 'distill', 'ensemble_finetune_distill', 'ensemble_finetune_scratch', 'ensemble_finetune_copy']


def at_demo(*args, check=True, timeout=600, fork=False):
    "Run the console script in a new process; `fork`: in a fork of this one (`tests/_bad_inputs.py`), for quick refusals."
    if fork: r = run_forked('at_demo', *args, env={'PYTHONWARNINGS': ''}, timeout=timeout)  # the environment of ENV
    else: r = subprocess.run([str(BIN/'at_demo'), *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout)
    if check: assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "One default-shaped run on `digits`: all four methods, two seeds, two worker processes."
    out = tmp_path_factory.mktemp('demo')
    r = at_demo('--data', 'digits', '--seeds', '0', '1', '--workers', '2', *TINY, '--output_dir', out)
    return out, r


def test_results_json_shape(run):
    out, _ = run
    res = json.loads((out/'results.json').read_text())
    assert list(res) == ['seeds', 'wall_seconds', 'accuracy', 'gap_recovered', 'environment'] and res['seeds'] == [0, 1]
    env = {'cpu', 'cores', 'threads', 'load', 'python', 'torch', 'timm'}  # the command kit's environment()
    assert set(res['environment']) == env and res['environment']['torch'] == torch.__version__
    assert isinstance(res['wall_seconds'], float) and res['wall_seconds'] > 0
    assert list(res['accuracy']) == KEYS
    for k, v in res['accuracy'].items():
        assert len(v) == 2 and all(isinstance(a, float) and 0 <= a <= 100 for a in v), (k, v)
        # accuracies are exact percentages of the 540 test digits
        assert all(abs(a * 540 / 100 - round(a * 540 / 100)) < 1e-6 for a in v), (k, v)
    # gap recovered: one definition, the ratio of the means over seeds; undefined (null) when fine-tune <= scratch
    m = {k: np.mean(v) for k, v in res['accuracy'].items()}
    for k in ('distill', 'copy'):
        want = (m[k] - m['scratch']) / (m['finetune'] - m['scratch']) if m['finetune'] > m['scratch'] else None
        assert res['gap_recovered'][k] == pytest.approx(want) if want is not None else res['gap_recovered'][k] is None


def test_files_and_output(run):
    out, r = run
    for f in ('results.png', 'attention.png', 'run.json', 'teacher/encoder.pth', 'students/distill_seed1.pth'):
        assert (out/f).is_file() and (out/f).stat().st_size > 0, f
    assert (out/'results.png').read_bytes()[:4] == b'\x89PNG'
    run_ = json.loads((out/'run.json').read_text())
    assert run_['config']['seeds'] == [0, 1] and run_['workers'] == 2
    assert set(run_['jobs']) == {f'{m}_seed{s}' for m in KEYS[:4] for s in (0, 1)} | {'teacher'}
    assert 'scratch < distill < fine-tune in every seed' in r.stdout and 'paper, ImageNet' in r.stdout
    assert 'paired by seed: distill - scratch = ' in r.stdout and '(> 0 in ' in r.stdout
    assert "attention vs the teacher's, seed 0" in r.stdout and '* = transferred by distill' in r.stdout  # labelled per-block table
    assert set(run_['attention_js']) == {'scratch', 'finetune', 'copy', 'distill'} and len(run_['attention_kl']['distill']) == 4
    assert '\r' not in r.stdout and '%' + ' [' not in r.stdout  # piped: no progress-bar frames, only lines
    assert all(l.startswith(('seed ', 'teacher: ')) for l in r.stdout.splitlines()[1:10])  # each job's line on its own


def test_reuse_teacher_and_methods(run, tmp_path):
    "--teacher skips pre-training; --methods trains a subset, and only the ensembles of trained members appear."
    out, _ = run
    r = at_demo('--data', 'digits', '--seeds', '3', '--workers', '0', *TINY, '--teacher', out/'teacher'/'encoder.pth',
                '--methods', 'finetune', 'distill', '--output_dir', tmp_path)
    res = json.loads((tmp_path/'results.json').read_text())
    assert list(res['accuracy']) == ['finetune', 'distill', 'ensemble_finetune_distill'] and res['seeds'] == [3]
    assert not (tmp_path/'teacher'/'encoder.pth').exists() and 'teacher' not in json.loads((tmp_path/'run.json').read_text())['jobs']


def test_bad_teacher(run, tmp_path):
    "A truncated teacher, or one of another architecture, fails with one line before any student trains, and writes nothing."
    out, _ = run
    enc = (out/'teacher'/'encoder.pth').read_bytes()
    (tmp_path/'trunc.pth').write_bytes(enc[:len(enc) // 2])
    for teacher, msg in ((tmp_path/'trunc.pth', 'truncated or corrupt'), (out/'teacher'/'encoder.pth', 'does not fit vit_pico_patch7_28')):
        r = at_demo('--data', 'digits', '--seeds', '0', *TINY[:-4], '--teacher', teacher, '--output_dir', tmp_path/'o', check=False, fork=True)
        assert r.returncode == 1 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
        assert 'scratch:' not in r.stdout and not (tmp_path/'o').exists()


def test_image_folder(tmp_path):
    "An ImageFolder with train/ and val/ works end to end (3 classes of random colour images)."
    rng = np.random.default_rng(0)
    for split, n in (('train', 12), ('val', 3)):
        for c in ('a', 'b', 'c'):
            (tmp_path/'imgs'/split/c).mkdir(parents=True)
            for i in range(n): Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(tmp_path/'imgs'/split/c/f'{i}.png')
    at_demo('--data', tmp_path/'imgs', '--seeds', '0', '--workers', '0', '--epochs', '1', '--pretrain_epochs', '1', '--depth', '4',
            '--batch_size', '12', '--output_dir', tmp_path/'out')
    res = json.loads((tmp_path/'out'/'results.json').read_text())
    assert list(res['accuracy']) == KEYS and all(len(v) == 1 for v in res['accuracy'].values())


@pytest.mark.parametrize('args, msg', [
    (['--teacher', 'nope.pth'], 'checkpoint not found'),
    (['--methods', 'scratch', 'magic'], 'unknown magic'),
    (['--data', 'no_such_folder'], 'neither a built-in dataset'),
    (['--epochs', '0'], 'at least 1'),
    (['--n_labelled', '5', '--data', 'digits'], 'fewer than the 10 classes'),
    (['--depth', '3'], '--end_layer_copy: end_layer=-3 out of range for a model with 3 blocks'),
    (['--model', 'no_such_vit'], 'unknown model'),
    (['--workers', '-1'], '--workers must be 0'),
    (['--methods', 'scratch', 'distill_features'], '--methods: no recipe (lr) for distill_features: give one, e.g. --recipe'),
    (['--recipe', 'distill.lrr=1'], '--recipe distill.lrr=1: distill takes lr, layer_decay, '),
])
def test_bad_flags(tmp_path, args, msg):
    r = at_demo(*args, '--output_dir', tmp_path/'o', check=False, fork=True)
    assert r.returncode != 0 and msg in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path/'o'/'results.json').exists()


def test_output_dir_is_a_file(tmp_path):
    "In a process of its own: the installed console script's exit status and stderr."
    (tmp_path/'f').write_text('x')
    r = at_demo('--output_dir', tmp_path/'f', check=False)
    assert r.returncode == 1 and 'exists and is not a folder' in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert (tmp_path/'f').read_text() == 'x'
