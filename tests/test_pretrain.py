"""`at_pretrain` end to end: the encoder it writes is a teacher that `create_teacher` and `at_train --finetune` load."""
import subprocess, sys
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image

BIN = Path(sys.executable).parent
TINY = ['--model', 'vit_nano_patch4_32', '--epochs', '1', '--batch_size', '16', '--steps_per_epoch', '2',
        '--warmup_epochs', '0', '--decoder_dim', '32', '--decoder_depth', '1']


def run(cmd, *args):
    p = subprocess.run([str(BIN/cmd), *map(str, args)], capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout, p.stderr


def check_teacher(enc_path, tmp_path):
    "The encoder loads as an MAE-format teacher, with the pre-trained blocks, and at_train distils from it."
    from attention_transfer.models import create_teacher
    ck = torch.load(enc_path, weights_only=True)
    assert set(ck) == {'model'}
    assert not any(k.startswith(('head', 'decoder', 'mask_token')) for k in ck['model'])
    teacher = create_teacher('vit_nano_patch4_32', enc_path, num_classes=10)
    assert teacher.at_checkpoint['format'] == 'mae'
    for k, v in teacher.state_dict().items():
        if k.startswith(('blocks.', 'patch_embed.', 'pos_embed', 'cls_token')): assert torch.equal(v, ck['model'][k]), k
    code, out, err = run('at_train', '--model', 'vit_nano_patch4_32', '--mode', 'distill', '--finetune', enc_path, '--data', 'digits',
                         '--epochs', '1', '--batch_size', '16', '--steps_per_epoch', '2', '--warmup_epochs', '0',
                         '--num_workers', '0', '--output_dir', tmp_path/'distill')
    assert code == 0, err
    assert (tmp_path/'distill/model.pth').is_file()


def test_at_pretrain_digits(tmp_path):
    out = tmp_path/'mae'
    code, stdout, err = run('at_pretrain', *TINY, '--data', 'digits', '--output_dir', out)
    assert code == 0, err
    assert 'digits: 1257 train images' in stdout  # the 540 test digits stay out of pre-training
    assert {'checkpoint.pth', 'encoder.pth', 'log.jsonl', 'curves.png', 'reconstructions.png'} <= {p.name for p in out.iterdir()}
    check_teacher(out/'encoder.pth', tmp_path)


def test_at_pretrain_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path/'images'
    for cls in ('cats', 'dogs'):
        (root/'train'/cls).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(root/'train'/cls/f'{i}.png')
    (root/'val'/'cats').mkdir(parents=True)
    (root/'val'/'cats'/'broken.png').write_bytes(b'not an image')  # never read: pre-training uses train/ only
    out = tmp_path/'mae'
    code, stdout, err = run('at_pretrain', *TINY, '--data', root, '--output_dir', out, '--resume', 'allow')
    assert code == 0, err
    assert '24 train images' in stdout
    check_teacher(out/'encoder.pth', tmp_path)


def test_at_pretrain_bad_input(tmp_path):
    code, _, err = run('at_pretrain', *TINY, '--data', tmp_path/'nowhere', '--output_dir', tmp_path/'out')
    assert code != 0 and err.count('\n') == 1 and 'neither a built-in dataset' in err
    assert not (tmp_path/'out').exists()
