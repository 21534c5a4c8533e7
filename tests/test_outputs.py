"""Console output behaves like an ordinary file when piped: `at_train` and `at_pretrain` write their lines and no
progress-bar frames (no carriage returns), each epoch's line on its own line. (`at_demo`'s piped output is checked
in tests/test_demo.py; in a terminal or a notebook the bars are drawn.)"""
import re
from _bad_inputs import run


def _check(r, n_epochs):
    assert r.returncode == 0, r.stderr[-3000:]
    assert '\r' not in r.stdout and '\r' not in r.stderr, repr(r.stdout[-500:])
    epochs = [l for l in r.stdout.splitlines() if re.match(r'epoch \d+: ', l)]
    assert [l.split(':')[0] for l in epochs] == [f'epoch {i}' for i in range(n_epochs)], r.stdout


def test_at_train_piped(tmp_path):
    _check(run('at_train', '--model', 'vit_nano_patch4_32', '--data', 'digits', '--epochs', 2, '--steps_per_epoch', 2,
               '--batch_size', 8, '--num_workers', 0, '--warmup_epochs', 0, '--output_dir', tmp_path/'t'), 2)


def test_at_pretrain_piped(tmp_path):
    _check(run('at_pretrain', '--model', 'vit_nano_patch4_32', '--data', 'digits', '--epochs', 2, '--steps_per_epoch', 2,
               '--batch_size', 8, '--warmup_epochs', 0, '--output_dir', tmp_path/'p'), 2)
