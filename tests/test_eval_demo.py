"""Issue 11's acceptance test: a CI-size `at_demo` run, then `at_eval` on every student and every ensemble it wrote,
gives exactly the numbers of the demo's `results.json` (same machine, same versions: the forward passes are
bit-identical, and both go through `ensemble.predict`/`score`). And `at_eval` under `torchrun --nproc_per_node 2`
(gloo, CPU) gives exactly the one-process numbers on a split that two processes do not divide evenly, printed once."""
import json, os, shutil, signal, subprocess
from pathlib import Path
import pytest
from _bad_inputs import BIN, ENV, run

TINY = ['--epochs', '1', '--pretrain_epochs', '1', '--n_labelled', '100', '--depth', '4', '--batch_size', '50']
METHODS = ['scratch', 'finetune', 'copy', 'distill']
ENSEMBLES = {'ensemble_finetune_distill': ('finetune', 'distill'), 'ensemble_finetune_scratch': ('finetune', 'scratch'),
             'ensemble_finetune_copy': ('finetune', 'copy')}


def ok(r):
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def at_eval_json(out:Path, *args) -> dict:
    "Run at_eval with --output `out` and return what it wrote."
    ok(run('at_eval', *args, '--output', out))
    return json.loads(out.read_text())


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    "The demo on digits' 540 test images: four methods, two seeds, two worker processes."
    out = tmp_path_factory.mktemp('eval_demo')/'runs'/'demo'
    ok(run('at_demo', '--data', 'digits', '--seeds', '0', '1', '--workers', '2', *TINY, '--output_dir', out, timeout=900))
    return out


def test_at_eval_reproduces_every_student_and_ensemble(demo, tmp_path):
    res = json.loads((demo/'results.json').read_text())
    for i, seed in enumerate(res['seeds']):
        students = [demo/'students'/f'{m}_seed{seed}.pth' for m in METHODS]
        got = at_eval_json(tmp_path/f'members{seed}.json', *students)
        for m, p in zip(METHODS, students):
            assert got[str(p)]['top1'] == res['accuracy'][m][i], (m, seed)     # exactly: the same logits, the same count
            assert got[str(p)]['n'] == 540
        for name, members in ENSEMBLES.items():
            got = at_eval_json(tmp_path/f'{name}{seed}.json', *[demo/'students'/f'{m}_seed{seed}.pth' for m in members])
            assert got['ensemble (prob)']['top1'] == res['accuracy'][name][i], (name, seed)


def test_the_reported_command(demo):
    "The issue's command (a copy student with --model and --data that agree with the file) prints the demo's number."
    res = json.loads((demo/'results.json').read_text())
    r = ok(run('at_eval', demo/'students'/'copy_seed0.pth', '--model', 'vit_pico_patch7_28', '--data', 'digits'))
    assert f"copy_seed0.pth: top1 {res['accuracy']['copy'][0]:.2f}  top5" in r.stdout, r.stdout


def test_moved_run_folder_finds_its_teacher(demo, tmp_path):
    "The teacher's path is stored relative to the student: a run folder moved as a whole still evaluates, exactly."
    res = json.loads((demo/'results.json').read_text())
    moved = shutil.copytree(demo, tmp_path/'elsewhere')
    away = demo.parent/'encoder.away'
    os.replace(demo/'teacher'/'encoder.pth', away)   # the absolute path recorded in the file now leads nowhere
    try: got = at_eval_json(tmp_path/'moved.json', moved/'students'/'copy_seed1.pth')
    finally: os.replace(away, demo/'teacher'/'encoder.pth')
    assert got[str(moved/'students'/'copy_seed1.pth')]['top1'] == res['accuracy']['copy'][1]


def torchrun(n:int, prog:str, *args, timeout:int=600) -> subprocess.CompletedProcess:
    "`torchrun --standalone --nproc_per_node=n prog ...`; on timeout the whole process group is killed."
    cmd = [str(BIN/'torchrun'), '--standalone', f'--nproc_per_node={n}', '--no-python', str(BIN/prog), *map(str, args)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    try: out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL); p.communicate(); raise
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def test_torchrun_gives_the_one_process_numbers(demo, tmp_path):
    "301 held-out images (151 + 150 over two processes): every image counted once, the same numbers, one report."
    d = tmp_path/'holdout'
    ok(run('at_demo', '--data', 'digits', '--seeds', '0', '--workers', '0', *TINY, '--holdout', '301', '--methods', 'finetune', 'copy', 'distill',
           '--teacher', demo/'teacher'/'encoder.pth', '--output_dir', d, timeout=900))
    res = json.loads((d/'results.json').read_text())
    students = [d/'students'/f'{m}_seed0.pth' for m in ('finetune', 'copy', 'distill')]
    one = at_eval_json(tmp_path/'one.json', *students)
    r = torchrun(2, 'at_eval', *students, '--output', tmp_path/'two.json')
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    two = json.loads((tmp_path/'two.json').read_text())
    assert list(two) == list(one)
    for k in one:
        assert {m: two[k][m] for m in ('top1', 'top5', 'n')} == {m: one[k][m] for m in ('top1', 'top5', 'n')}, k
        assert two[k]['n'] == 301 and two[k]['loss'] == pytest.approx(one[k]['loss'], rel=1e-5)
        assert sum(l.startswith(f'{k}: top1') for l in r.stdout.splitlines()) == 1, r.stdout  # printed once, by rank 0
    for m, p in zip(('finetune', 'copy', 'distill'), students): assert two[str(p)]['top1'] == res['accuracy'][m][0]
    assert sorted(os.listdir(tmp_path)) == ['holdout', 'one.json', 'two.json']  # no temporary or second files
