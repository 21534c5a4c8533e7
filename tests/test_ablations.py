"""`at_ablate` as a user runs it, at a toy size: its code path end to end (teachers, arms, seeds, files), the resume,
and one-line refusals of bad flags and of a folder holding a run with other settings."""
import dataclasses, json, re, subprocess, sys
from pathlib import Path
import pytest
from attention_transfer.ablations import main, AblateArgs

TINY = ['--data', 'digits', '--shift_data', 'mnist5k', '--epochs', '1', '--pretrain_epochs', '1', '--n_labelled', '100',
        '--depth', '4', '--batch_size', '50', '--seeds', '0', '1']
ARMS = ['scratch', 'distill', 'distill_avg_examples', 'distill_avg_queries', 'distill_heads1', 'distill_heads2', 'finetune',
        'finetune_shift', 'distill_shift']


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp('abl')/'run'
    main([*TINY, '--ablations', 'averaged', 'heads', 'shift', '--output_dir', str(out)])
    return out


def test_files_and_arms(run):
    res = json.loads((run/'results.json').read_text())
    assert list(res['accuracy']) == ARMS and res['seeds'] == [0, 1] and res['epochs'] == 1
    assert all(len(v) == 2 and all(0 <= a <= 100 for a in v) for v in res['accuracy'].values())
    assert res['ablations']['averaged'] == ['distill', 'distill_avg_examples', 'distill_avg_queries']
    assert res['refs'] == {'distill_avg_examples': 'distill', 'distill_avg_queries': 'distill', 'distill_heads1': 'distill',
                           'distill_heads2': 'distill', 'finetune_shift': 'finetune', 'distill_shift': 'distill'}
    assert res['labels']['distill_heads1'] == 'attention distillation, 1 of 4 heads'
    jobs = [json.loads(l) for l in (run/'jobs.jsonl').read_text().splitlines()]
    assert [(j['variant'], j['seed']) for j in jobs] == [(a, s) for s in (0, 1) for a in ARMS]  # seed by seed
    md = (run/'results.md').read_text()
    assert md.count('### ') == 3 and '| attention distillation, map averaged over queries |' in md and '− scratch, paired' in md
    assert (run/'results.png').read_bytes()[:4] == b'\x89PNG'
    assert (run/'teacher'/'encoder.pth').is_file() and (run/'teacher_shift'/'encoder.pth').is_file()
    shift = json.loads((run/'teacher_shift'/'encoder.json').read_text())  # mnist5k: 27 steps an epoch against digits' 2 (batch 128)
    assert len(shift['history']) == 1


def test_resume_trains_nothing(run, capsys):
    before = (run/'jobs.jsonl').read_text()
    main([*TINY, '--ablations', 'averaged', 'heads', 'shift', '--output_dir', str(run)])
    out = capsys.readouterr().out
    assert (run/'jobs.jsonl').read_text() == before and 'seed 0 scratch' not in out and 'teacher: MAE' not in out
    assert ', 1 epoch; 9 arms x 2 seeds' in out  # singular for one


def test_other_settings_refused(run, capsys):
    with pytest.raises(SystemExit) as e: main([*TINY, '--ablations', 'averaged', '--output_dir', str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and len(err) == 1 and 'other settings' in err[0] and err[0].startswith('at_ablate: error: ')
    assert 'it has --ablations averaged heads shift; this run asks for --ablations averaged' in err[0], err


def test_other_settings_named(run, capsys):
    before = sorted(p.name for p in run.rglob('*'))
    with pytest.raises(SystemExit) as e: main([*TINY, '--ablations', 'averaged', 'heads', 'shift', '--epochs', '2', '--output_dir', str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and len(err) == 1 and '(it has --epochs 1; this run asks for --epochs 2)' in err[0], err
    assert sorted(p.name for p in run.rglob('*')) == before


@pytest.mark.parametrize('flag', ['--teacher', '--shift_teacher'])
def test_teacher_of_another_architecture_refused_before_work(run, flag, tmp_path, capsys):
    out = tmp_path/'never'  # the fixture's teachers have 4 blocks; this run's model has 3
    with pytest.raises(SystemExit) as e:
        main([*TINY, '--depth', '3', flag, str(run/'teacher'/'encoder.pth'), '--ablations', 'heads', 'shift', '--output_dir', str(out)])
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert e.value.code == 1 and len(err) == 1 and err[0].startswith(f'at_ablate: error: {flag}: '), err
    assert not out.exists()


@pytest.mark.parametrize('args, code, name', [
    (['--ablations', 'depth'], 1, '--ablations'),
    (['--epochs', '0'], 1, '--epochs'),
    (['--seeds', '1', '1'], 1, '--seeds'),
    (['--bogus'], 2, '--bogus'),
    (['--depth', '2', '--ablations', 'heads'], 1, '--model/--depth'),  # the reference distillation's end_layer=-2 leaves no block
    (['--depth', '2', '--ablations', 'target'], 1, 'none for a model with 2 blocks'),
    (['--model', 'vit_nano_patch4_32', '--depth', '2'], 1, 'use at least 3 blocks'),
    (['--data', 'nope'], 1, "--data: 'nope'"),
    (['--n_labelled', '40'], 1, '40 labelled images make no full batch of 50'),
    (['--teacher', 'nope.pth'], 1, '--teacher: checkpoint not found: nope.pth'),
    (['--shift_data', 'nope', '--ablations', 'shift'], 1, "--shift_data: 'nope'"),
    (['--shift_teacher', 'nope.pth', '--ablations', 'shift'], 1, '--shift_teacher: checkpoint not found'),
])
def test_bad_flags_refused_in_one_line(args, code, name, tmp_path, capsys):
    out = tmp_path/'never'
    with pytest.raises(SystemExit) as e: main([*TINY, *args, '--output_dir', str(out)])
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert e.value.code == code and len(err) == 1 and err[0].startswith('at_ablate: error: ') and name in err[0], err
    assert not out.exists()


def test_every_flag_has_help(capsys):
    with pytest.raises(SystemExit) as e: main(['--help'])
    h = ' '.join(capsys.readouterr().out.split())
    assert e.value.code == 0
    for flag in [f.name for f in dataclasses.fields(AblateArgs)]:
        i = h.index(f'--{flag}')
        assert len(h[i:].split('--')[1].split()) > 2, flag  # the flag, its metavar, then words of help
        j = h.index(f'--{flag}', h.index('options:'))  # its entry in the option list
        entry = re.split(r' --\w+ [A-Z][A-Z_]+ ', h[j + 2:])[0]  # up to the next option (help text may name other flags)
        assert '(default: ' in entry and '(default: )' not in h, flag  # one spelling, never empty


def test_import_registers_no_method():
    "The averaged-map methods enter the method table when run_ablations (or the notebook) registers them, not on import."
    code = ("from attention_transfer.methods import METHODS; before = list(METHODS); import attention_transfer.ablations as a; "
            "assert list(METHODS) == before, set(METHODS) - set(before); a.register_ablation_methods(); "
            "assert set(METHODS) - set(before) == {'distill_avg_examples', 'distill_avg_queries'}")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
