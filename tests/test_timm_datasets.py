"""`--dataset`: what timm's `create_dataset` reads (issue 21, item 3). Tiny WebDataset shards and a Hugging Face dataset
on disk (Parquet, the Hub's layout), written here, train with `at_train` and score with `at_eval`; the splits shard
across two ranks with every sample seen once; a map-style dataset and a WebDataset (with a loader worker) resume
exactly; and each bad input is one line, exit 1, before any work. No network: the Hub is offline for this module."""
import os, tempfile
os.environ.update(HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1')  # before `datasets` is imported: no Hub, no retries
os.environ.setdefault('HF_DATASETS_CACHE', tempfile.mkdtemp(prefix='at_hf_cache_'))  # arrow files of local datasets
import io, json, struct, sys, tarfile
from pathlib import Path
import numpy as np, pytest, torch
import torch.distributed as dist
from PIL import Image
import attention_transfer.vit  # noqa: F401  (registers vit_nano_patch4_32)
from attention_transfer.data import build_loader
from attention_transfer.timm_data import build_timm_dataset, write_wds
from _bad_inputs import assert_refused, run, run_forked

TRAIN = ['--model', 'vit_nano_patch4_32', '--epochs', 1, '--batch_size', 4, '--num_workers', 0, '--warmup_epochs', 0,
         '--aa', 'none', '--attn_probe', 0]


def toy(n:int, seed:int, classes:int=3):
    "`n` 32-pixel RGB images of `classes` brightness classes (uint8 `n h w 3`) and their labels."
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.integers(0, 60, (n, 32, 32, 3)) + (180 // max(classes - 1, 1)) * y[:, None, None, None]
    return x.clip(0, 255).astype(np.uint8), y


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    "WebDataset shards (2 training shards of 8, 1 test shard of 6), others with a label per sample, a Hugging Face dataset."
    root = tmp_path_factory.mktemp('data')
    write_wds(root/'wds', 'toy', {'train': toy(16, 0), 'validation': toy(6, 1)}, shard_size=8, num_classes=3)
    ids = lambda n, s: (toy(n, s)[0], np.arange(n))  # label = sample number: who saw which sample
    write_wds(root/'ids', 'ids', {'train': ids(16, 2), 'validation': ids(16, 3)}, shard_size=4, num_classes=16)
    write_wds(root/'nameless', 'toy', {'train': toy(16, 0), 'validation': toy(6, 1)}, shard_size=8)  # no num_classes
    import datasets
    feats = datasets.Features(image=datasets.Image(), label=datasets.ClassLabel(names=['dark', 'mid', 'bright']))
    for split, (n, seed) in {'train': (12, 4), 'validation': (6, 5)}.items():
        x, y = toy(n, seed)
        d = datasets.Dataset.from_dict(dict(image=[Image.fromarray(i) for i in x], label=y.tolist()), features=feats)
        d.to_parquet(str(root/'hf'/'data'/f'{split}-00000-of-00001.parquet'))
    (root/'empty').mkdir()
    raw = root/'tv'/'MNIST'/'raw'; raw.mkdir(parents=True)  # torchvision's MNIST files (idx format), 20 + 10 images
    for pre, n in (('train', 20), ('t10k', 10)):
        x, y = toy(n, 8, 10)
        (raw/f'{pre}-images-idx3-ubyte').write_bytes(struct.pack('>IIII', 2051, n, 32, 32) + x[..., 0].tobytes())
        (raw/f'{pre}-labels-idx1-ubyte').write_bytes(struct.pack('>II', 2049, n) + y.astype(np.uint8).tobytes())
    (root/'tars').mkdir()
    for split, (n, seed) in {'train': (6, 9), 'val': (3, 10)}.items():  # a tar of class folders per split
        with tarfile.open(root/'tars'/f'{split}.tar', 'w') as t:
            for i, (x, y) in enumerate(zip(*toy(n, seed))):
                b = io.BytesIO(); Image.fromarray(x).save(b, 'PNG')
                ti = tarfile.TarInfo(f"{['dark', 'mid', 'bright'][y]}/{i}.png"); ti.size = len(b.getvalue())
                t.addfile(ti, io.BytesIO(b.getvalue()))
    return root


def _log(d) -> list: return [json.loads(l) for l in (Path(d)/'log.jsonl').read_text().splitlines()]


def _meta(path) -> dict: return torch.load(path, map_location='cpu', weights_only=False)['meta']


@pytest.fixture(scope='module')
def runs(data, tmp_path_factory):
    "One epoch on the shards (the installed at_train, a process of its own) and one on the Hugging Face dataset (a fork)."
    out = tmp_path_factory.mktemp('runs')
    jobs = {'wds': ['--dataset', 'wds/toy', '--data_path', data/'wds', '--steps_per_epoch', 3],
            'hfds': ['--dataset', f"hfds/{data/'hf'}", '--steps_per_epoch', 2]}
    res = {k: (run if k == 'wds' else run_forked)('at_train', *TRAIN, *a, '--output_dir', out/k) for k, a in jobs.items()}
    for k, r in res.items(): assert r.returncode == 0, f"{k}: {r.stdout[-2000:]}{r.stderr[-3000:]}"
    return out, res


@pytest.mark.parametrize('kind', ['wds', 'hfds'])
def test_train_then_eval(runs, data, kind):
    "A run on `--dataset` trains its steps, records the dataset, and at_eval scores model.pth as the run scored it."
    out, res = runs
    rec, = _log(out/kind)
    assert np.isfinite(rec['train_loss']) and 0 <= rec['test_top1'] <= 100
    assert 'wds/toy (' in res[kind].stdout or kind == 'hfds', res[kind].stdout
    d = _meta(out/kind/'checkpoint.pth')
    assert d['data']['dataset'] == ('wds/toy' if kind == 'wds' else f"hfds/{data/'hf'}")
    assert d['data']['split'] == 'validation'
    assert d['classes'] == (None if kind == 'wds' else ['dark', 'mid', 'bright'])  # a ClassLabel names them
    e = run_forked('at_eval', out/kind/'model.pth', '--num_workers', 0)
    assert e.returncode == 0, e.stderr[-3000:]
    line, = [l for l in e.stdout.splitlines() if l.startswith(str(out/kind/'model.pth'))]
    assert '(6 images)' in line and f"top1 {rec['test_top1']:.2f}" in line, (line, rec['test_top1'])


def test_teacher_on_shards_probes_attention(data, tmp_path):
    "A teacher run on WebDataset shards (iterable only) takes its attention probe by iterating: attn_js is logged."
    import timm
    torch.save(timm.create_model('vit_nano_patch4_32', num_classes=3).state_dict(), tmp_path/'t.pth')
    r = run_forked('at_train', *TRAIN[:-1], '4', '--mode', 'distill', '--finetune', tmp_path/'t.pth',
                   '--dataset', 'wds/toy', '--data_path', data/'wds', '--steps_per_epoch', 1, '--output_dir', tmp_path/'o')
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rec, = _log(tmp_path/'o')
    assert np.isfinite(rec['attn_js']) and rec['attn_js'] >= 0, rec


def test_hfds_cache_not_among_the_data(data, tmp_path):
    "A local Hugging Face dataset inside --data_path (its cache) is refused: `datasets` would write rows into it."
    import shutil
    shutil.copytree(data/'hf', tmp_path/'ds')
    assert_refused('at_train', *TRAIN, '--dataset', f"hfds/{tmp_path/'ds'}", '--data_path', tmp_path, '--output_dir',
                   tmp_path/'out', names=['--data_path', str(tmp_path/'ds')], code=1, watch=[tmp_path/'ds'],
                   absent=[tmp_path/'out'])


def test_eval_refuses_a_changed_test_split(runs, tmp_path):
    "at_eval refuses the recorded split when it holds another number of images than the run's log.jsonl says."
    import shutil
    out, _ = runs
    shutil.copy(out/'hfds'/'model.pth', tmp_path/'model.pth')
    recs = _log(out/'hfds'); recs[-1]['test_n'] += 1  # as if the split had lost an image since
    (tmp_path/'log.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in recs))
    assert_refused('at_eval', tmp_path/'model.pth', '--num_workers', 0, code=1,
                   names=[str(tmp_path/'model.pth'), f"scored {recs[-1]['test_n']} test images", 'holds 6'])


def test_eval_on_another_dataset_of_the_same_classes(runs, data, tmp_path):
    "at_eval --dataset reads other images of the recorded classes; a folder of other class names is refused."
    out, _ = runs
    for split, (n, seed) in {'train': (3, 6), 'val': (5, 7)}.items():
        for i, (x, y) in enumerate(zip(*toy(n, seed))):
            p = tmp_path/split/['dark', 'mid', 'bright'][y]/f'{i}.png'; p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x).save(p)
    e = run_forked('at_eval', out/'hfds'/'model.pth', '--dataset', 'folder', '--data_path', tmp_path, '--num_workers', 0)
    assert e.returncode == 0 and '(5 images)' in e.stdout, e.stdout + e.stderr[-3000:]


@pytest.mark.parametrize('kind', ['torch', 'tar'])
def test_torchvision_and_tars(data, tmp_path, kind):
    "torch/NAME reads torchvision's files (grayscale MNIST made RGB), a plain name a folder of .tar files; both train."
    src = ['--dataset', 'torch/mnist', '--data_path', data/'tv'] if kind == 'torch' else \
          ['--dataset', 'imagenet', '--data_path', data/'tars']
    r = run_forked('at_train', *TRAIN, *src, '--steps_per_epoch', 1, '--output_dir', tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    classes = ['0 - zero', '1 - one'] if kind == 'torch' else ['bright', 'dark', 'mid']  # timm sorts folders
    n_test = 10 if kind == 'torch' else 3
    assert _meta(tmp_path/'checkpoint.pth')['classes'][:len(classes)] == classes
    assert f"/ {n_test} test images" in r.stdout, r.stdout


def test_nb_classes_from_the_data(data):
    "The classes come from the dataset: a ClassLabel's names, `num_classes` of `_info.json`, else none (--nb_classes)."
    assert build_timm_dataset(f"hfds/{data/'hf'}", None, 'train', True, 32)[1] == 3
    assert build_timm_dataset('wds/toy', str(data/'wds'), 'train', True, 32, batch_size=4)[1] == 3
    assert build_timm_dataset('wds/toy', str(data/'nameless'), 'train', True, 32, batch_size=4)[1] is None


def _as_rank(monkeypatch, world:int, rank:int):
    "Make torch.distributed report a `world`-process group in which this process is `rank` (timm's readers ask it)."
    monkeypatch.setattr(dist, 'is_initialized', lambda: True)
    monkeypatch.setattr(dist, 'get_world_size', lambda *a: world)
    monkeypatch.setattr(dist, 'get_rank', lambda *a: rank)


@pytest.mark.parametrize('workers', [0, 2])
def test_wds_shards_by_rank(data, monkeypatch, workers):
    """Two ranks (each with `workers` loader workers) read disjoint shards: together every sample once, train and test.
    (4 shards of 4 samples per split: timm's reader is exact when the shards divide evenly among ranks x workers.)"""
    seen = {}
    for split, train in (('train', True), ('validation', False)):
        for r in range(2):
            with monkeypatch.context() as m:
                _as_rank(m, 2, r)
                ds, _ = build_timm_dataset('wds/ids', str(data/'ids'), split, train, 32, batch_size=4, augment=False)
            dl = build_loader(ds, 4, train, workers, seed=0, world_size=2, rank=r)
            dl.set_epoch(0)
            seen[split, r] = torch.cat([y for _, y in dl]).tolist()
    assert sorted(seen['train', 0] + seen['train', 1]) == list(range(16))
    assert len(seen['train', 0]) == len(seen['train', 1]) == 8  # two shards each: the same number of steps
    assert sorted(seen['validation', 0] + seen['validation', 1]) == list(range(16))


def test_map_style_shards_by_rank(data):
    "A Hugging Face dataset goes through the project's samplers: two ranks see every image once, train and test."
    tr, _ = build_timm_dataset(f"hfds/{data/'hf'}", None, 'train', True, 32)
    va, _ = build_timm_dataset(f"hfds/{data/'hf'}", None, 'validation', False, 32)
    idx = lambda ds, train: [i for r in range(2) for i in build_loader(ds, 2, train, world_size=2, rank=r).sampler]
    assert sorted(idx(tr, True)) == list(range(12)) and sorted(idx(va, False)) == list(range(6))


@pytest.mark.parametrize('kind', ['hfds', 'wds'])
def test_resume_is_exact(data, tmp_path, kind):
    "Two epochs in one go, or one and a resume, give the same weights: map-style, and shards with a loader worker."
    src = (['--dataset', f"hfds/{data/'hf'}", '--num_workers', 0] if kind == 'hfds' else
           ['--dataset', 'wds/toy', '--data_path', data/'wds', '--num_workers', 1])
    args = [*TRAIN, *src, '--epochs', 2, '--steps_per_epoch', 2, '--reprob', 0.5]
    for a in ([*args, '--output_dir', tmp_path/'straight'], [*args, '--stop_epoch', 1, '--output_dir', tmp_path/'split'],
              [*args, '--resume', 'allow', '--output_dir', tmp_path/'split']):
        r = run_forked('at_train', *a)
        assert r.returncode == 0, r.stderr[-3000:]
    a, b = (torch.load(tmp_path/d/'checkpoint.pth', map_location='cpu', weights_only=False) for d in ('straight', 'split'))
    assert a['epoch'] == b['epoch'] == 1
    for k in a['model']: assert torch.equal(a['model'][k], b['model'][k]), k
    assert [l['train_loss'] for l in _log(tmp_path/'straight')] == [l['train_loss'] for l in _log(tmp_path/'split')]


def test_stream_resumed_with_another_worker_count(data, tmp_path):
    "timm's reader deals the shards to each loader worker: another --num_workers would reorder a resumed stream."
    args = [*TRAIN, '--dataset', 'wds/toy', '--data_path', data/'wds', '--epochs', 2, '--steps_per_epoch', 2,
            '--output_dir', tmp_path/'run']
    r = run_forked('at_train', *args, '--num_workers', 1, '--stop_epoch', 1)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_refused('at_train', *args, '--num_workers', 0, '--resume', 'allow', code=1, watch=[tmp_path/'run'],
                   names=['is another run', 'wds/toy stream', '--num_workers 1', '--num_workers 0'])


def test_stream_without_workers_cannot_resume(data, tmp_path):
    "Without loader workers the reader's shuffle buffer is not saved: the run says so at its start, its resume is refused."
    args = [*TRAIN, '--dataset', 'wds/toy', '--data_path', data/'wds', '--epochs', 2, '--steps_per_epoch', 2,
            '--output_dir', tmp_path/'run']
    r = run_forked('at_train', *args, '--stop_epoch', 1)  # TRAIN reads with --num_workers 0
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith('at_train: note: --num_workers 0') and 'cannot be resumed exactly' in r.stdout.splitlines()[0]
    assert_refused('at_train', *args, '--resume', 'allow', code=1, watch=[tmp_path/'run'],
                   names=['cannot continue exactly', 'wds/toy stream', '--num_workers 0', 'shuffle buffer'])


def _refused(tmp_path, *args, names=()):
    "at_train on `args` is refused with one line naming `names`, exit 1, and no output folder."
    return assert_refused('at_train', *TRAIN, *args, '--output_dir', tmp_path/'out', names=names, code=1,
                          absent=[tmp_path/'out'])


def test_wds_without_shards(data, tmp_path):
    _refused(tmp_path, '--dataset', 'wds/toy', '--data_path', data/'empty', names=['wds/toy', 'no shards'])
    _refused(tmp_path, '--dataset', 'wds/toy', names=['--data_path'])  # where are they?
    _refused(tmp_path, '--dataset', 'wds/toy', '--data_path', data/'wds', '--train_split', 'toy-train-{000000..000002}.tar|24',
             names=['toy-train-000002.tar', 'is missing'])


def test_unknown_split(data, tmp_path):
    _refused(tmp_path, '--dataset', 'wds/toy', '--data_path', data/'wds', '--val_split', 'test',
             names=['--val_split test', 'not a split'])
    _refused(tmp_path, '--dataset', f"hfds/{data/'hf'}", '--val_split', 'test', names=['--val_split test', 'Unknown split'])
    _refused(tmp_path, '--dataset', f"hfds/{data/'hf'}", '--data_path', tmp_path/'cache', '--val_split', 'test',
             names=['--val_split test', 'Unknown split'])  # a new cache: no "Generating ... split" progress bars first
    _refused(tmp_path, '--dataset', 'folder', '--data_path', data/'hf', '--train_split', 'train',
             names=['--train_split train', 'no train/ folder'])


def test_hfds_offline_not_cached(tmp_path):
    _refused(tmp_path, '--dataset', 'hfds/nobody-at-all/no-such-dataset', names=['hfds/nobody-at-all/no-such-dataset',
                                                                               'Hugging Face cache'])


@pytest.mark.parametrize('pkg,name', [('webdataset', 'wds/toy'), ('datasets', 'hfds/someone/something')])
def test_extra_not_installed(data, tmp_path, monkeypatch, pkg, name):
    monkeypatch.setitem(sys.modules, pkg, None)  # `import pkg` raises ImportError, in the fork that runs at_train
    _refused(tmp_path, '--dataset', name, '--data_path', data/'wds', names=[name, 'pip install "attention_transfer[data]"'])


def test_flags_that_contradict(data, tmp_path):
    _refused(tmp_path, '--dataset', 'wds/toy', '--data_path', data/'wds', '--data', 'digits', names=['--data digits',
                                                                                                   '--dataset wds/toy'])
    _refused(tmp_path, '--data', 'digits', '--val_split', 'test', names=['--val_split', '--dataset only'])
    _refused(tmp_path, '--dataset', f"hfds/{data/'hf'}", '--input_key', 'img', names=['--input_key img', 'no such column'])
    _refused(tmp_path, '--dataset', f"hfds/{data/'hf'}", '--target_key', 'y', names=['--target_key y', 'no such column'])
    _refused(tmp_path, '--dataset', 'folder', '--data_path', data/'wds', '--target_key', 'y',
             names=['--target_key', 'wds/ and hfds/'])
    _refused(tmp_path, '--dataset', 'wds/toy', '--data_path', data/'nameless', names=['--nb_classes'])
