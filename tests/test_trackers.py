"""`at_train --log_tensorboard DIR` and `--log_wandb` (issue 21, item 4): every number `log.jsonl` holds reaches
TensorBoard and Weights & Biases (offline) exactly, a resumed run continues the same folder / W&B run without logging
an epoch twice, the trackers leave the training untouched, and a missing extra is one line before any work.
Read back with the trackers' own readers: TensorBoard's event accumulator, and the records of W&B's offline run file."""
import json, os, struct, subprocess, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import pytest, torch, timm
import attention_transfer.vit  # noqa: F401  (registers vit_nano_patch4_32)

BIN = Path(sys.executable).parent
ENV = dict(os.environ, OMP_NUM_THREADS='1', MPLBACKEND='Agg', PYTHONWARNINGS='ignore::UserWarning')
TIMINGS = {'train_seconds', 'images_per_s', 'seconds'}  # differ from run to run
PIP = 'pip install "attention_transfer[log]"'


def flags(root, out, *extra):
    "A tiny distillation with EMA and the attention probe: losses and their parts, accuracies, attn_*, timings."
    return ['--model', 'vit_nano_patch4_32', '--input_size', '32', '--num_workers', '0', '--warmup_epochs', '0',
            '--data', 'digits', '--mode', 'distill', '--finetune', str(root/'mae.pth'), '--end_layer', '-1',
            '--batch_size', '8', '--epochs', '3', '--steps_per_epoch', '2', '--ema', '0.9', '--attn_probe', '8',
            '--output_dir', str(out), *map(str, extra)]


def at_train(args, env):
    r = subprocess.run([str(BIN/'at_train'), *args], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def log(d): return [json.loads(l) for l in (Path(d)/'log.jsonl').read_text().splitlines()]


def tensorboard_events(d) -> dict:
    "{tag: [(step, value), ...]} as TensorBoard's own reader loads the folder (purges applied)."
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util
    acc = EventAccumulator(str(d), size_guidance={'tensors': 0}); acc.Reload()
    return {t: [(e.step, tensor_util.make_ndarray(e.tensor_proto).item()) for e in acc.Tensors(t)]
            for t in acc.Tags()['tensors']}


def wandb_records(path) -> list:
    "The protobuf records of a W&B run file (`run-<id>.wandb`: a header, then LevelDB-log blocks of 32 KiB)."
    from wandb.proto import wandb_internal_pb2 as pb
    b = Path(path).read_bytes()
    assert b[:4] == b':W&B', path
    pos, part, out = 7, b'', []
    while pos + 7 <= len(b):
        if 32768 - pos % 32768 < 7: pos += 32768 - pos % 32768; continue  # a block's zero padding
        _, n, kind = struct.unpack('<IHB', b[pos:pos + 7])
        part += b[pos + 7:pos + 7 + n]; pos += 7 + n
        if kind in (1, 4): r = pb.Record(); r.ParseFromString(part); out.append(r); part = b''  # FULL, LAST
    return out


def wandb_run(wandb_dir) -> list:
    "Each offline run in `wandb_dir` in order: {id, config, history: [(step, {name: value})], summary}."
    key = lambda i: i.key or '/'.join(i.nested_key)
    runs = []
    for f in sorted(Path(wandb_dir).glob('wandb/offline-run-*/run-*.wandb')):
        run = dict(history=[], summary={}, config={})
        for r in wandb_records(f):
            kind = r.WhichOneof('record_type')
            if kind == 'run':
                run['id'] = r.run.run_id
                run['config'].update({key(i): json.loads(i.value_json) for i in r.run.config.update})
            elif kind == 'config': run['config'].update({key(i): json.loads(i.value_json) for i in r.config.update})
            elif kind == 'history':
                run['history'].append((r.history.step.num, {key(i): json.loads(i.value_json) for i in r.history.item}))
            elif kind == 'summary': run['summary'].update({key(i): json.loads(i.value_json) for i in r.summary.update})
        runs.append(run)
    return runs


def numbers(rec): return {k: v for k, v in rec.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """One run watched by both trackers, stopped after 2 of 3 epochs and resumed; before the resume, a stale epoch 2
    is written to the TensorBoard folder (as a crash after logging it and before its checkpoint would leave it).
    And the same run without trackers, straight through."""
    root = tmp_path_factory.mktemp('trackers')
    torch.manual_seed(0)
    torch.save({'model': timm.create_model('vit_nano_patch4_32', num_classes=0).state_dict()}, root/'mae.pth')
    env = dict(ENV, WANDB_MODE='offline', WANDB_DIR=str(root/'wb'), WANDB_CONFIG_DIR=str(root/'wbconfig'),
               WANDB_CACHE_DIR=str(root/'wbcache'), WANDB_DATA_DIR=str(root/'wbdata'))
    (root/'wb').mkdir()
    out, tb = root/'watched', root/'tb'
    track = ['--log_tensorboard', tb, '--log_wandb']
    with ThreadPoolExecutor(1) as ex:  # the plain run beside the watched one
        plain = ex.submit(at_train, flags(root, root/'plain'), ENV)
        first = at_train(flags(root, out, *track, '--stop_epoch', 2), env)
        from torch.utils.tensorboard import SummaryWriter
        w = SummaryWriter(str(tb)); w.add_scalar('train_loss', 99., 2, new_style=True, double_precision=True); w.close()
        second = at_train(flags(root, out, *track, '--resume', 'allow'), env)
        plain.result()
    return dict(root=root, out=out, tb=tb, wb=root/'wb', output=first.stdout + first.stderr + second.stdout)


def test_tensorboard_has_every_number_of_log_jsonl_exactly(runs):
    recs, ev = log(runs['out']), tensorboard_events(runs['tb'])
    assert [r['epoch'] for r in recs] == [0, 1, 2]
    assert {'label_loss', 'transfer_loss', 'transfer_loss_0', 'lr', 'test_top1', 'test_top5', 'ema_top1', 'attn_kl',
            'attn_js', 'attn_js_0', 'attn_js_1', 'images_per_s', 'seconds'} <= set(recs[0])
    want = {k: [(r['epoch'], r[k]) for r in recs if k in numbers(r)] for k in numbers(recs[0]) if k != 'epoch'}
    assert ev == want  # each name, each epoch once, the value as log.jsonl holds it (float64, not rounded)


def test_tensorboard_resume_continues_the_folder_and_hides_the_stale_epoch(runs):
    ev = tensorboard_events(runs['tb'])
    assert [s for s, _ in ev['train_loss']] == [0, 1, 2] and 99. not in [v for _, v in ev['train_loss']]
    assert len(list(runs['tb'].glob('events.out.tfevents.*'))) == 3  # the first run's, the stale one's, the resumed


def test_wandb_offline_run_holds_every_number_and_the_config(runs):
    recs, (a, b) = log(runs['out']), wandb_run(runs['wb'])
    assert a['id'] == b['id'] == (runs['out']/'wandb_run_id').read_text().strip()  # resumed: the same W&B run
    hist = [(s, {k: v for k, v in h.items() if not k.startswith('_')}) for s, h in a['history'] + b['history']]
    assert hist == [(r['epoch'], numbers(r)) for r in recs]  # steps 0, 1 then 2: none twice
    assert {k: v for k, v in b['summary'].items() if not k.startswith('_')} == numbers(recs[-1])
    args = torch.load(runs['out']/'checkpoint.pth', weights_only=True)['args']
    assert {k: v for k, v in b['config'].items() if not k.startswith('_')} == json.loads(json.dumps(args))
    assert (a['config']['mode'], a['config']['epochs'], a['config']['log_wandb']) == ('distill', 3, True)


def test_trackers_leave_the_training_unchanged(runs):
    "log.jsonl stays the record: the watched run (stopped and resumed) equals the plain one but for the timings."
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMINGS} for r in rs]
    assert strip(log(runs['out'])) == strip(log(runs['root']/'plain'))


@pytest.mark.parametrize('flag,module', [('--log_tensorboard', 'tensorboard'), ('--log_wandb', 'wandb')])
def test_missing_extra_is_one_line_before_any_work(tmp_path, monkeypatch, capsys, flag, module):
    from attention_transfer.cli import main
    monkeypatch.setitem(sys.modules, module, None)  # as if the `log` extra were not installed
    if module == 'tensorboard': monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)
    torch.save({'model': timm.create_model('vit_nano_patch4_32', num_classes=0).state_dict()}, tmp_path/'mae.pth')
    extra = [flag, tmp_path/'tb'] if flag == '--log_tensorboard' else [flag]
    with pytest.raises(SystemExit) as e: main(flags(tmp_path, tmp_path/'out', *extra))
    out, err = capsys.readouterr()
    assert e.value.code == 1 and out == '' and err.count('\n') == 1, err
    assert err.startswith(f'at_train: error: {flag} needs ') and err.strip().endswith(PIP), err
    assert not (tmp_path/'out').exists() and not (tmp_path/'tb').exists()


def test_tensorboard_folder_of_another_run_is_refused(runs, capsys):
    "A new run would hide the old run's steps in TensorBoard: one line, before any work."
    from attention_transfer.cli import main
    new = runs['root']/'another'
    with pytest.raises(SystemExit) as e: main(flags(runs['root'], new, '--log_tensorboard', runs['tb']))
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count('\n') == 1 and "--log_tensorboard" in err and "another run" in err, err
    assert not new.exists()


def test_only_rank_0_logs(tmp_path, monkeypatch):
    "Under torchrun the other processes write nothing and start no W&B run."
    from types import SimpleNamespace
    import attention_transfer.callbacks as cbs
    monkeypatch.setattr(cbs, 'rank', lambda: 1)
    tr = SimpleNamespace(epoch=0, history=[], output_dir=tmp_path/'out', meta={})
    for cb in (cbs.TensorBoardLog(tmp_path/'tb'), cbs.WandbLog()):
        cb.before_fit(tr); cb.after_epoch(tr, dict(epoch=0, train_loss=1.)); cb.after_fit(tr)
    assert not (tmp_path/'tb').exists() and not (tmp_path/'out').exists()


@pytest.mark.parametrize('case', ['file', 'unwritable', 'eval'])
def test_bad_tracker_flags_are_one_line_before_any_work(tmp_path, capsys, case):
    from attention_transfer.cli import main
    torch.save({'model': timm.create_model('vit_nano_patch4_32', num_classes=0).state_dict()}, tmp_path/'mae.pth')
    (tmp_path/'a_file').write_text('')
    base = ['--model', 'vit_nano_patch4_32', '--data', 'digits', '--num_workers', '0', '--output_dir', tmp_path/'out']
    if case == 'unwritable' and not Path('/proc/self').is_dir(): pytest.skip('needs /proc: a folder even root cannot write')
    argv, msg = {'file': (base + ['--log_tensorboard', tmp_path/'a_file'], '--log_tensorboard: cannot create'),
                 'unwritable': (base + ['--log_tensorboard', '/proc/at_train_tb'], '--log_tensorboard /proc/at_train_tb: cannot write in /proc'),
                 'eval': (base + ['--finetune', tmp_path/'mae.pth', '--eval', '--log_wandb'],
                          '--log_wandb does not apply to --eval')}[case]
    with pytest.raises(SystemExit) as e: main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert e.value.code == 1 and out == '' and err.count('\n') == 1 and msg in err, err
    assert not (tmp_path/'out').exists()


def test_wandb_without_login_is_one_line_before_any_work(tmp_path):
    "Online W&B with no API key: one line, before any work (no summary line), that says how to log in or log offline."
    env = {k: v for k, v in ENV.items() if not k.startswith('WANDB_')}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path/'no_netrc'), WANDB_MODE='online',
               WANDB_CONFIG_DIR=str(tmp_path/'wbconfig'))
    r = subprocess.run([str(BIN/'at_train'), '--model', 'vit_nano_patch4_32', '--data', 'digits', '--num_workers', '0',
                        '--batch_size', '8', '--epochs', '1', '--steps_per_epoch', '1', '--attn_probe', '0',
                        '--output_dir', str(tmp_path/'out'), '--log_wandb'],
                       capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and r.stderr.count('\n') == 1 and r.stdout == '', r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stderr.startswith('at_train: error: --log_wandb: ')
    assert all(w in r.stderr for w in ('wandb login', 'WANDB_API_KEY', 'WANDB_MODE=offline')), r.stderr
    assert not (tmp_path/'out').exists() and not (tmp_path/'wbconfig').exists()


def test_log_tensorboard_folder_expands_home_and_is_not_another_runs(tmp_path, capsys, monkeypatch):
    """`--log_tensorboard "~/tb"` (quoted, or from a config file) is the home folder's tb, not a folder named `~`; a
    folder in another run's output folder (its log.jsonl) is refused in one line before any work; this run's is fine."""
    from attention_transfer.cli import main
    torch.save({'model': timm.create_model('vit_nano_patch4_32', num_classes=0).state_dict()}, tmp_path/'mae.pth')
    other = tmp_path/'other'; other.mkdir(); (other/'log.jsonl').write_text('{}\n')
    monkeypatch.setenv('HOME', str(tmp_path/'home')); monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e: main(flags(tmp_path, tmp_path/'out', '--log_tensorboard', other/'tb'))
    out, err = capsys.readouterr()
    assert e.value.code == 1 and err.count('\n') == 1 and f"--log_tensorboard {other/'tb'} is in another run's" in err, err
    assert not (tmp_path/'out').exists() and not (other/'tb').exists()
    main(flags(tmp_path, tmp_path/'out', '--epochs', '1', '--attn_probe', '0', '--log_tensorboard', '~/tb'))
    assert not (tmp_path/'~').exists() and any((tmp_path/'home'/'tb').glob('events.out.tfevents.*'))
    main(flags(tmp_path, tmp_path/'out2', '--epochs', '1', '--attn_probe', '0', '--log_tensorboard', tmp_path/'out2'/'tb'))
    assert any((tmp_path/'out2'/'tb').glob('events.out.tfevents.*'))   # this run's own output folder
