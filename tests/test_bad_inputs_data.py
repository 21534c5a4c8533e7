"""Bad data and bad checkpoints, as a user meets them on the command line: each bad folder, image, dataset name or
checkpoint given to `at_train` (--data_path/--data, --finetune) or `at_eval` is refused with one line
`prog: error: ...` that names it and says what is wrong, with exit status 1, no traceback, nothing written, and a
previous good run's folder left byte- and mode-identical (harness: tests/_bad_inputs.py).

Tiny model (vit_nano_patch4_32, 32 px), two-class folders of 20x24 PNGs. Each case runs in a fork of this process; the
truncated checkpoint also as the installed at_train and at_eval in new processes (`real=True`)."""
import datetime, os, shutil
from pathlib import Path
import numpy as np, pytest, safetensors.torch, timm, torch
from PIL import Image
import attention_transfer.vit  # noqa: F401  (registers vit_nano_patch4_32 and vit_pico_patch4_32)
from _bad_inputs import assert_refused, run

TINY = ['--model', 'vit_nano_patch4_32', '--input_size', 32, '--num_workers', 0, '--steps_per_epoch', 2, '--epochs', 1,
        '--batch_size', 2, '--warmup_epochs', 0]


class _System:
    "Pickles as a call of os.system: what a malicious checkpoint holds."
    def __reduce__(self): return os.system, ('echo pwned',)


def make_folder(root:Path, train:dict, val:dict, seed:int=0) -> Path:
    "root/{train,val}/<class>/<i>.png with `train[class]`/`val[class]` random 20x24 RGB images (None: no split folder)."
    rng = np.random.default_rng(seed)
    for split, classes in (('train', train), ('val', val)):
        if classes is None: continue
        (root/split).mkdir(parents=True)
        for c, n in classes.items():
            (root/split/c).mkdir()
            for i in range(n): Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root/split/c/f'{i}.png')
    return root


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    "A data folder, an MAE-format teacher, a good finetune run on them (`good/`), and the bad checkpoints (`ck/`)."
    r = tmp_path_factory.mktemp('bad_inputs')
    data = make_folder(r/'data', {'ant': 2, 'bee': 2}, {'ant': 1, 'bee': 1})
    for split in ('train', 'val'): (data/split/'.ipynb_checkpoints').mkdir()   # hidden entries are not data
    (data/'train/ant/._0.png').write_bytes(b'\x00\x05\x16\x07 a macOS resource fork, not an image')
    torch.manual_seed(0)
    enc = timm.create_model('vit_nano_patch4_32', num_classes=0).state_dict()  # encoder only, as MAE saves it
    torch.save({'model': enc}, r/'teacher.pth')
    res = run('at_train', *TINY, '--data_path', data, '--mode', 'finetune', '--finetune', r/'teacher.pth', '--output_dir', r/'good', cwd=r)
    assert res.returncode == 0, res.stderr[-3000:]
    assert '"nb_classes": 2' in (r/'good/model.json').read_text()
    ck = r/'ck'; ck.mkdir()
    (ck/'empty.pth').write_bytes(b'')
    raw = (r/'teacher.pth').read_bytes(); (ck/'truncated.pth').write_bytes(raw[:len(raw) // 2])
    (ck/'notes.pth').write_text('not a checkpoint\n')
    torch.save({'model': enc, 'x': _System()}, ck/'system.pth')
    torch.save({'model': enc, 'saved': datetime.date(2024, 1, 1)}, ck/'date.pth')
    torch.save({'model': timm.create_model('vit_pico_patch4_32', num_classes=0).state_dict()}, ck/'pico.pth')
    safetensors.torch.save_file(enc, ck/'w.safetensors')
    raw = (ck/'w.safetensors').read_bytes(); (ck/'w.safetensors').write_bytes(raw[:len(raw) // 2])
    (ck/'folder.pth').mkdir()
    return r


# kind: (file in ck/, what the error line must say besides the file's name)
CKPTS = {
    'missing': ('missing.pth', 'not found'),
    'empty': ('empty.pth', 'the file is empty'),
    'truncated': ('truncated.pth', 'truncated or corrupt'),
    'not_torch': ('notes.pth', 'neither a PyTorch nor a safetensors file'),
    'unsafe_os_system': ('system.pth', f'holds {os.system.__module__}.system'),
    'unsafe_class': ('date.pth', 'holds datetime.date'),
    'other_architecture': ('pico.pth', 'does not fit vit_nano_patch4_32'),
    'corrupt_safetensors': ('w.safetensors', 'corrupt or truncated safetensors'),
    'directory': ('folder.pth', 'not a file'),
}


def check_reason(line:str, kind:str):
    "The error line says what is wrong; an unsafe pickle's line also says why it is refused and what to do."
    assert CKPTS[kind][1] in line, line
    if kind.startswith('unsafe'): assert 'refusing to load' in line and 'unsafe unpickling' in line and 'weights_only=False' in line, line


@pytest.mark.parametrize('kind', list(CKPTS))
def test_train_finetune_refuses(env, kind):
    p, retry = env/'ck'/CKPTS[kind][0], env/'good'/'retry'
    line = assert_refused('at_train', *TINY, '--data_path', env/'data', '--mode', 'finetune', '--finetune', p, '--output_dir', retry,
                          code=1, names=[p], watch=[env/'good', env/'ck', env/'data'], absent=[retry], cwd=env, real=kind == 'truncated')
    check_reason(line, kind)


def test_train_copy_refuses_unsafe_teacher(env):
    p, retry = env/'ck'/'system.pth', env/'good'/'retry'
    line = assert_refused('at_train', *TINY, '--data_path', env/'data', '--mode', 'copy', '--finetune', p, '--output_dir', retry,
                          code=1, names=[p], watch=[env/'good', env/'ck'], absent=[retry], cwd=env)
    check_reason(line, 'unsafe_os_system')


@pytest.mark.parametrize('kind', list(CKPTS))
def test_eval_refuses(env, kind):
    "`at_eval CHECKPOINT --model NAME`: a checkpoint that is not from a run."
    p, out = env/'ck'/CKPTS[kind][0], env/'good'/'eval.json'
    line = assert_refused('at_eval', p, '--model', 'vit_nano_patch4_32', '--data_path', env/'data', '--num_workers', 0, '--output', out,
                          code=1, names=[p], watch=[env/'good', env/'ck'], absent=[out], cwd=env, real=kind == 'truncated')
    check_reason(line, kind)


@pytest.mark.parametrize('kind', ['truncated', 'unsafe_os_system', 'other_architecture'])
def test_eval_refuses_in_run_folder(env, kind, tmp_path):
    "`at_eval RUN/model.pth`, where model.json tells the model, and model.pth is bad."
    rd = tmp_path/'run'; shutil.copytree(env/'good', rd); (rd/'model.pth').unlink()
    shutil.copy(env/'ck'/CKPTS[kind][0], rd/'model.pth')
    line = assert_refused('at_eval', rd/'model.pth', '--num_workers', 0, '--output', rd/'eval.json',
                          code=1, names=[rd/'model.pth'], watch=[rd], absent=[rd/'eval.json'], cwd=env)
    check_reason(line, kind)


@pytest.mark.parametrize('kind', ['missing', 'truncated', 'unsafe_os_system', 'directory'])
def test_eval_without_model_says_what_is_wrong(env, kind):
    "`at_eval CHECKPOINT` alone: the file's own fault comes first, not a request for --model."
    p, out = env/'ck'/CKPTS[kind][0], env/'good'/'eval.json'
    line = assert_refused('at_eval', p, '--data_path', env/'data', '--num_workers', 0, '--output', out,
                          code=1, names=[p], watch=[env/'good', env/'ck'], absent=[out], cwd=env)
    check_reason(line, kind)


def _not_an_image(d): (d/'train/bee/1.png').write_text('a note, not a picture\n'); return [d/'train/bee/1.png'], 'cannot read image'
def _truncated_image(d):
    f = d/'train/bee/1.png'; f.write_bytes(f.read_bytes()[:100]); return [f], 'cannot read image'
def _empty_class(d):
    shutil.rmtree(d/'train/bee'); (d/'train/bee').mkdir(); (d/'train/bee/notes.txt').write_text('todo\n'); return [d/'train/bee'], 'no images in'
def _val_classes_differ(d): (d/'val/bee').rename(d/'val/cow'); return [d/'val', 'cow'], 'not in the training split'
def _no_train(d): shutil.rmtree(d/'train'); return [d, 'train/'], 'has no train/ folder'
def _no_val(d): shutil.rmtree(d/'val'); return [d, 'val/'], 'has no val/ folder'
def _hidden_only(d):
    shutil.rmtree(d/'train'); (d/'train/.ipynb_checkpoints').mkdir(parents=True)
    Image.new('RGB', (4, 4)).save(d/'train/.ipynb_checkpoints/0.png'); return [d/'train'], 'has no class folders'
def _empty_val(d):
    for c in ('ant', 'bee'): shutil.rmtree(d/'val'/c); (d/'val'/c).mkdir(); (d/'val'/c/'._0.png').write_bytes(b'\x00\x05\x16\x07')
    return [d/'val'], 'no images in'
def _out_of_scale(d):
    f = d/'train/bee/2.tif'; Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(f); return [f], '0..65535'

FOLDERS = {'not_an_image': _not_an_image, 'truncated_image': _truncated_image, 'class_without_images': _empty_class,
           'val_classes_differ': _val_classes_differ, 'no_train': _no_train, 'no_val': _no_val, 'hidden_entries_only': _hidden_only,
           'val_without_images': _empty_val, 'image_out_of_scale': _out_of_scale}


@pytest.mark.parametrize('case', list(FOLDERS))
def test_train_refuses_folder(env, case, tmp_path):
    d = make_folder(tmp_path/'data', {'ant': 2, 'bee': 2}, {'ant': 1, 'bee': 1})
    names, why = FOLDERS[case](d)
    retry = env/'good'/'retry'
    line = assert_refused('at_train', *TINY, '--data_path', d, '--output_dir', retry,
                          code=1, names=names, watch=[env/'good', d], absent=[retry], cwd=env)
    assert why in line, line


@pytest.mark.parametrize('flag, value, why', [('--data_path', 'nope', 'nor an existing folder'),
                                              ('--data', 'imagenet1k', 'neither a built-in dataset')])
def test_train_refuses_data_name(env, flag, value, why):
    "A --data_path that does not exist, and a --data name that is not a built-in data set."
    value = str(env/value) if flag == '--data_path' else value
    retry = env/'good'/'retry'
    line = assert_refused('at_train', *TINY, flag, value, '--output_dir', retry,
                          code=1, names=[value], watch=[env/'good'], absent=[retry], cwd=env)
    assert why in line, line


def test_eval_refuses_folder(env, tmp_path):
    "at_eval reads only val/: a val/ class unknown to train/ is refused there too."
    d = make_folder(tmp_path/'data', {'ant': 2, 'bee': 2}, {'ant': 1, 'cow': 1})
    out = env/'good'/'eval.json'
    line = assert_refused('at_eval', env/'good'/'model.pth', '--data_path', d, '--num_workers', 0, '--output', out,
                          code=1, names=[d/'val', 'cow'], watch=[env/'good', d], absent=[out], cwd=env)
    assert 'not in the training split' in line, line


def test_eval_numpy_metadata(env, tmp_path):
    "Issue 23: a plain checkpoint whose metadata holds numpy values evaluates; with code beside them, only the code is named."
    sd = torch.load(env/'good'/'model.pth', weights_only=True)
    sd = sd.get('model', sd)
    meta = {'best_acc': np.float64(0.9), 'epoch': np.int64(3), 'curve': np.linspace(0., 1., 3), 'dtype': np.dtype('float32')}
    torch.save({'model': sd, **meta}, tmp_path/'np.pth'); torch.save({'model': sd, **meta, 'x': _System()}, tmp_path/'np_system.pth')
    r = run('at_eval', tmp_path/'np.pth', '--model', 'vit_nano_patch4_32', '--data_path', env/'data', '--num_workers', 0,
            '--output', tmp_path/'eval.json', cwd=env)
    assert r.returncode == 0 and (tmp_path/'eval.json').is_file(), r.stderr[-2000:]
    p = tmp_path/'np_system.pth'
    line = assert_refused('at_eval', p, '--model', 'vit_nano_patch4_32', '--data_path', env/'data', '--num_workers', 0,
                          code=1, names=[p, f'holds {os.system.__module__}.system, which'], watch=[tmp_path], cwd=env)
    assert 'numpy.' not in line, line
