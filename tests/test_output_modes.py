"""Outputs behave like ordinary files: what `at_train` and `at_eval` write (checkpoints, log.jsonl, model.json, figures,
results) gets the mode `open()` would give under the process's umask, 0o666 & ~umask (folders 0o777 & ~umask), not the
0600 of the atomic write's temporary file; and no temporary file is left behind."""
import json, os, stat, subprocess, sys
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = dict(os.environ, OMP_NUM_THREADS='1', MPLBACKEND='Agg', PYTHONWARNINGS='ignore::UserWarning')
TINY = ['--model', 'vit_nano_patch4_32', '--input_size', '32', '--num_workers', '0', '--steps_per_epoch', '2', '--epochs', '1',
        '--batch_size', '4', '--warmup_epochs', '0']


def under_umask(mask:int, prog:str, *args) -> subprocess.CompletedProcess:
    "Run console script `prog` with umask `mask`; assert it succeeded."
    r = subprocess.run([str(BIN/prog), *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300,
                       preexec_fn=lambda: os.umask(mask))
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def modes(folder:Path) -> dict:
    "{name: permission bits} of everything in `folder`, the folder itself as '.'."
    return {'.': stat.S_IMODE(folder.stat().st_mode), **{p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}}


def test_outputs_follow_the_umask(tmp_path):
    run = tmp_path/'run'
    under_umask(0o027, 'at_train', *TINY, '--data', 'digits', '--ema', '0.9', '--output_dir', run)
    got = modes(run)
    assert {'checkpoint.pth', 'log.jsonl', 'model.json', 'model.pth', 'model_ema.pth', 'curves.png'} <= set(got), got
    assert got == {'.': 0o750, **{n: 0o640 for n in got if n != '.'}}, {n: oct(m) for n, m in got.items()}  # no .tmp left either
    res = tmp_path/'results'/'eval.json'
    under_umask(0o022, 'at_eval', run/'model.pth', '--num_workers', '0', '--output', res)
    assert modes(res.parent) == {'.': 0o755, 'eval.json': 0o644}
    assert str(run/'model.pth') in json.loads(res.read_text())
