"""`at_train` / `at_eval` as a user runs them: console scripts in subprocesses, torchrun with two gloo processes,
exact resume, and one-line failures on bad checkpoints. Tiny models (vit_nano_patch4_32), a few steps each."""
import json, os, signal, subprocess, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import numpy as np, pytest, timm, torch
from PIL import Image
import attention_transfer.vit  # noqa: F401  (registers vit_nano_patch4_32)

BIN = Path(sys.executable).parent
ENV = dict(os.environ, OMP_NUM_THREADS='1', MPLBACKEND='Agg', PYTHONWARNINGS='ignore::UserWarning')
MODEL = ['--model', 'vit_nano_patch4_32', '--input_size', '32', '--num_workers', '0', '--warmup_epochs', '0']


def at(*args, tool='at_train', check=True, timeout=300):
    "Run a console script; returns the CompletedProcess (asserting success when `check`)."
    r = subprocess.run([str(BIN/tool), *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout)
    if check: assert r.returncode == 0, r.stderr[-3000:]
    return r


def torchrun(n, *args, timeout=300):
    "`torchrun --standalone --nproc_per_node=n at_train ...`; on timeout the whole process group is killed."
    cmd = [str(BIN/'torchrun'), '--standalone', f'--nproc_per_node={n}', '--no-python', str(BIN/'at_train'), *map(str, args)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    try: out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL); p.communicate(); raise
    assert p.returncode == 0, out[-2000:] + err[-3000:]


def log(d): return [json.loads(l) for l in (Path(d)/'log.jsonl').read_text().splitlines()]


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    "A random teacher saved in MAE's pre-training format, and a tiny ImageFolder (3 classes)."
    root = tmp_path_factory.mktemp('train')
    torch.manual_seed(0)
    enc = timm.create_model('vit_nano_patch4_32', num_classes=0).state_dict()  # encoder only: no head, with `norm`
    torch.save({'model': enc}, root/'mae_teacher.pth')
    rng = np.random.default_rng(0)
    for split, n in (('train', 6), ('val', 2)):
        for c in ('ant', 'bee', 'cat'):
            (root/'folder'/split/c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root/'folder'/split/c/f'{i}.png')
    return root


@pytest.fixture(scope='module')
def runs(files):
    "Every mode, a few steps, on digits and on the ImageFolder, with official-style flags (two runs at a time)."
    out, jobs = {}, []
    for data in ('digits', 'folder'):
        src = ['--data', 'digits'] if data == 'digits' else ['--data_path', files/'folder']
        for mode in ('scratch', 'finetune', 'copy', 'distill'):
            d = files/'runs'/f'{data}_{mode}'
            extra = [] if mode == 'scratch' else ['--finetune', files/'mae_teacher.pth']
            if mode == 'distill': extra += ['--end_layer', '-1', '--atd_weight', '3.0']
            jobs.append([*MODEL, *src, '--mode', mode, *extra, '--batch_size', 4, '--epochs', 1, '--steps_per_epoch', 2,
               '--blr', 1e-3, '--min_lr', 1e-6, '--layer_decay', 0.75, '--beta2', 0.95, '--weight_decay', 0.05,
               '--drop_path', 0.1, '--reprob', 0.25, '--mixup', 0.8, '--cutmix', 1.0, '--smoothing', 0.1,
               '--ema', 0.99, '--clip_grad', 1.0, '--accum_iter', 1, '--global_pool', '--dist_eval', '--seed', 0,
               '--output_dir', d])
            out[data, mode] = d
    with ThreadPoolExecutor(2) as ex: list(ex.map(lambda a: at(*a), jobs))
    return out


@pytest.mark.parametrize('data', ['digits', 'folder'])
@pytest.mark.parametrize('mode', ['scratch', 'finetune', 'copy', 'distill'])
def test_every_mode_writes_checkpoint_and_log(runs, data, mode):
    d = runs[data, mode]
    rec, = log(d)
    assert rec['epoch'] == 0 and rec['step'] == 2 and np.isfinite(rec['train_loss'])
    assert ('transfer_loss' in rec) == (mode == 'distill')
    assert ('attn_js' in rec) == (mode != 'scratch')  # compared with the pre-trained model, when there is one
    for k in ('test_top1', 'test_top5', 'ema_top1', 'ema_top5', 'lr', 'seconds', 'images_per_s'): assert k in rec
    ck = torch.load(d/'checkpoint.pth', weights_only=True)
    assert (ck['epoch'], ck['step'], ck['args']['mode']) == (0, 2, mode)
    spec = json.loads((d/'model.json').read_text())
    assert spec['mode'] == mode and spec['nb_classes'] == (10 if data == 'digits' else 3)
    if mode == 'copy': assert spec['finetune'].endswith('mae_teacher.pth') and spec['teacher'] == 'vit_nano_patch4_32'
    m = timm.create_model('vit_nano_patch4_32', num_classes=spec['nb_classes'], global_pool='avg')
    m.load_state_dict(torch.load(d/'model.pth', weights_only=True)['model'])  # timm's layout: {'model': weights, 'meta': description}
    meta = torch.load(d/'model.pth', weights_only=True)['meta']
    assert (meta['method'], meta['model'], meta['model_args']['num_classes'], len(meta['classes'])) == (mode, 'vit_nano_patch4_32', spec['nb_classes'], spec['nb_classes'])
    assert (meta['teacher'] is not None) == (mode in ('copy', 'distill')) and ck['meta'] == {**meta, 'teacher': ck['meta']['teacher']}
    assert (d/'model_ema.pth').is_file() and (d/'curves.png').is_file()


def test_at_eval_runs_and_ensemble(runs):
    r = at(runs['digits', 'copy']/'model.pth', runs['digits', 'distill']/'checkpoint.pth', runs['digits', 'scratch']/'model_ema.pth',
           '--num_workers', 0, '--output', runs['digits', 'copy'].parent/'eval.json', tool='at_eval')
    res = json.loads((runs['digits', 'copy'].parent/'eval.json').read_text())
    assert len(res) == 4 and 'ensemble (prob): top1' in r.stdout
    copy_acc = res[str(runs['digits', 'copy']/'model.pth')]['top1']
    assert abs(copy_acc - log(runs['digits', 'copy'])[0]['test_top1']) < 1e-6  # same network as in training: the copy net


def test_attention_divergence_logged_and_shown(runs, files, tmp_path):
    "Runs with a pre-trained model log attn_* every epoch (a copy of every block reads 0); --attn_teacher gives scratch one; at_eval --attention prints the per-block table."
    for mode in ('finetune', 'copy', 'distill'):
        rec, = log(runs['digits', mode])
        assert {'attn_kl', 'attn_js', 'attn_js_0', 'attn_js_1'} <= set(rec) and 0 <= rec['attn_js'] <= np.log(2) + 1e-6, (mode, rec)
    assert log(runs['digits', 'copy'])[0]['attn_js'] == pytest.approx(0, abs=1e-6)
    at(*MODEL, '--data', 'digits', '--epochs', 1, '--steps_per_epoch', 1, '--batch_size', 4, '--attn_teacher', files/'mae_teacher.pth',
       '--attn_probe', 16, '--output_dir', tmp_path/'scratch')
    assert 0 < log(tmp_path/'scratch')[0]['attn_js'] < np.log(2)
    r = at(runs['digits', 'distill']/'model.pth', tmp_path/'scratch'/'model.pth', '--attention', 32, '--teacher', files/'mae_teacher.pth',
           '--num_workers', 0, tool='at_eval')
    assert r.stdout.count("attention vs the teacher's on 32 images") == 2, r.stdout
    lines = r.stdout.splitlines()
    i = next(j for j, l in enumerate(lines) if l.startswith(str(runs['digits', 'distill']/'model.pth') + ': attention'))
    assert lines[i + 1].split() == ['block', 'KL', 'JS'] and lines[i + 2].split()[0] == '0*' and lines[i + 3].split()[0] == '1'


def test_two_processes_match_one(files, tmp_path):
    "torchrun with 2 gloo processes and half the batch each: same first-step loss as one process with the whole batch."
    flags = [*MODEL, '--data', 'digits', '--mode', 'distill', '--finetune', files/'mae_teacher.pth', '--epochs', 1,
             '--steps_per_epoch', 4, '--accum_iter', 2, '--no_aug', '--drop_path', 0, '--ema', 0.9]
    torchrun(2, *flags, '--batch_size', 4, '--output_dir', tmp_path/'two')
    at(*flags, '--batch_size', 8, '--output_dir', tmp_path/'one')
    two, one = log(tmp_path/'two')[0], log(tmp_path/'one')[0]
    assert two['first_loss'] == pytest.approx(one['first_loss'], rel=1e-5, abs=1e-6)
    assert two['train_loss'] == pytest.approx(one['train_loss'], rel=1e-4)   # after one synchronised update, too
    assert two['test_n'] == one['test_n'] == 540                              # evaluation shards cover the set once
    assert two['test_top1'] == pytest.approx(one['test_top1'], abs=0.2)
    assert two['attn_js'] == pytest.approx(one['attn_js'], rel=1e-3)          # the probe: 32 + 32 images = the same 64
    ck = torch.load(tmp_path/'two'/'checkpoint.pth', weights_only=True)
    assert len(ck['rng']) == 2 and ck['step'] == 2                            # both processes' RNG states saved


def test_resume_is_bit_exact(files, tmp_path):
    "Stopping after epoch 1 of 3 and resuming ends with the same weights, bit for bit, as the uninterrupted run."
    flags = [*MODEL, '--data', 'digits', '--mode', 'distill', '--finetune', files/'mae_teacher.pth', '--epochs', 3,
             '--warmup_epochs', 1, '--steps_per_epoch', 3, '--batch_size', 8, '--ema', 0.9, '--mixup', 0.8, '--cutmix', 1.0,
             '--drop_path', 0.2, '--share_drop_path', '--num_workers', 1]
    at(*flags, '--output_dir', tmp_path/'whole')
    at(*flags, '--output_dir', tmp_path/'split', '--stop_epoch', 1)
    assert not (tmp_path/'split'/'model.pth').exists() and len(log(tmp_path/'split')) == 1
    at(*flags, '--output_dir', tmp_path/'split', '--resume', 'allow')
    for name in ('model.pth', 'model_ema.pth'):
        a, b = (torch.load(tmp_path/r/name, weights_only=True)['model'] for r in ('whole', 'split'))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert [r['train_loss'] for r in log(tmp_path/'whole')] == [r['train_loss'] for r in log(tmp_path/'split')]
    assert [r['attn_js'] for r in log(tmp_path/'whole')] == [r['attn_js'] for r in log(tmp_path/'split')]  # the probe resumes too


def test_bad_checkpoints_fail_with_one_line(files, tmp_path):
    wrong = tmp_path/'wrong.pth'
    torch.save({'model': timm.create_model('vit_pico_patch4_32').state_dict()}, wrong)
    trunc = tmp_path/'trunc.pth'
    trunc.write_bytes((files/'mae_teacher.pth').read_bytes()[:2000])
    base = [*MODEL, '--data', 'digits', '--epochs', 1, '--steps_per_epoch', 1, '--batch_size', 4]
    cases = [(['--mode', 'copy', '--finetune', wrong], 'does not fit'),
             (['--mode', 'distill', '--finetune', trunc], 'cannot read checkpoint'),
             (['--mode', 'finetune', '--finetune', tmp_path/'missing.pth'], 'not found'),
             (['--resume', trunc], 'cannot read checkpoint')]
    for i, (args, msg) in enumerate(cases):
        out = tmp_path/f'out{i}'
        r = at(*base, *args, '--output_dir', out, check=False)
        assert r.returncode != 0 and r.stderr.count('\n') == 1 and msg in r.stderr, r.stderr
        assert not out.exists()
    r = at(wrong, '--data', 'digits', tool='at_eval', check=False)
    assert r.returncode != 0 and r.stderr.count('\n') == 1, r.stderr


@pytest.fixture(scope='module')
def folder64(tmp_path_factory):
    "An ImageFolder of 64 training images (2 classes) and 8 validation images."
    root = tmp_path_factory.mktemp('folder64')
    rng = np.random.default_rng(1)
    for split, n in (('train', 32), ('val', 4)):
        for c in ('a', 'b'):
            (root/split/c).mkdir(parents=True)
            for i in range(n): Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root/split/c/f'{i}.png')
    return root


def cos_lr(pos, epochs=4): return 0.5 * (1 + np.cos(np.pi * pos / epochs))  # no warmup, min_lr 0, in units of lr0


SCHED = [*MODEL, '--epochs', 4, '--lr', 1e-3, '--min_lr', 0, '--layer_decay', 1, '--aa', 'none', '--reprob', 0, '--smoothing', 0,
         '--drop_path', 0]


def test_resume_on_two_processes_keeps_the_schedule(folder64, tmp_path):
    """Epoch 0 on one process (batch 8), the rest on two (batch 4 each: the same 8 images per update, 8 updates per
    epoch): the lr continues as in one run. Two processes of batch 8 (16 per update) are refused before any work."""
    flags = [*SCHED, '--data_path', folder64, '--output_dir', tmp_path/'run']
    at(*flags, '--batch_size', 8, '--stop_epoch', 1)
    cmd = [str(BIN/'torchrun'), '--standalone', '--nproc_per_node=2', '--no-python', str(BIN/'at_train'), *map(str, flags),
           '--batch_size', 8, '--resume', 'allow']
    r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, env=ENV, timeout=300)
    want = ('its updates average 8 images (--batch_size 8 x --accum_iter 1 x 1 process); this run\'s would average 16 '
            '(--batch_size 8 x --accum_iter 1 x 2 processes)')
    assert r.returncode != 0 and 'at_train [rank 0]: error: --resume ' in r.stderr and want in r.stderr, r.stderr[-3000:]
    assert len(log(tmp_path/'run')) == 1
    torchrun(2, *flags, '--batch_size', 4, '--resume', 'allow')
    recs = log(tmp_path/'run')
    lrs = [r['lr'] / 1e-3 for r in recs]   # the lr of each epoch's last update
    assert [r['epoch'] for r in recs] == [0, 1, 2, 3] and recs[-1]['step'] == 4 * 8
    assert lrs == pytest.approx([cos_lr(e + 7 / 8) for e in range(4)], rel=1e-9)
    ck = torch.load(tmp_path/'run'/'checkpoint.pth', weights_only=True)
    assert len(ck['rng']) == 2 and ck['epoch'] == 3


def test_resume_with_other_batch_split_workers_and_data_location(folder64, tmp_path):
    """What only changes how the same run is computed may change on resume: batch 8 becomes 4 x 2 accumulated (8 per
    update), 6 steps of 8 become 12 of 4 (48 images an epoch), another worker count, the data moved."""
    import shutil
    at(*SCHED, '--data_path', folder64, '--batch_size', 8, '--steps_per_epoch', 6, '--output_dir', tmp_path/'run',
       '--stop_epoch', 1)
    moved = shutil.copytree(folder64, tmp_path/'moved')
    r = at(*SCHED, '--data_path', moved, '--batch_size', 4, '--accum_iter', 2, '--steps_per_epoch', 12, '--num_workers', 1,
           '--output_dir', tmp_path/'run', '--resume', 'allow')
    assert 'from epoch 1' in r.stdout and '6 updates/epoch' in r.stdout
    lrs = [rec['lr'] / 1e-3 for rec in log(tmp_path/'run')]
    assert lrs == pytest.approx([cos_lr(e + 5 / 6) for e in range(4)], rel=1e-9)  # each epoch's last update: 5 of 6
    assert (tmp_path/'run'/'model.pth').is_file()
