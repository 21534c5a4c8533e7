"""What `at_eval` reads from a checkpoint alone (issue 21, the new-user trial's leftovers). A teacher that is not the
recorded one is refused in one line that shows what differs: the two SHA-256 prefixes, and the revisions only where
they differ. A run records its evaluation split's size (`n`), so a checkpoint copied away from its `log.jsonl` still
refuses a split that changed. A checkpoint saved from one's own loop (timm's task contract) records no data: one line
names the flags to give, and a teacher by name gives the mean and std, as `at_train` would have used them."""
import json, shutil
from pathlib import Path
import pytest, timm, torch
import huggingface_hub.constants as hf
from PIL import Image
from timm.optim import create_optimizer_v2
from timm.utils import CheckpointSaver
import attention_transfer.vit  # noqa: F401  (registers vit_nano_patch4_32)
import attention_transfer.ensemble as ens
from attention_transfer.data import build_dataset, build_loader
from attention_transfer.distill import AttentionDistill
from attention_transfer.methods import build_task
from attention_transfer.models import (create_model, create_teacher, create_student, checkpoint_meta, save_student,
                                       save_timm_checkpoint)
from attention_transfer.transfer import AttentionCopy
from attention_transfer.cli import main as at_train
from attention_transfer.evaluate import main as at_eval
from test_hub import put, weights, sha, cli, C1, C2, TINY

NANO, MAE, REPO = 'vit_nano_patch4_32', 'vit_base_patch16_224.mae', 'timm/vit_base_patch16_224.mae'
CLASSES = [str(i) for i in range(10)]
DIGITS = dict(name='digits', split='val', holdout=0, input_size=32, mean=[0.5] * 3, std=[0.5] * 3, pipeline='timm')


@pytest.fixture
def hub(tmp_path, monkeypatch):
    "An offline Hugging Face cache of this test's own (it changes it), holding a tiny ViT-B/16 'MAE' at commit C1."
    cache = tmp_path/'hub'
    put(cache, REPO, {'model.safetensors': weights('vit_base_patch16_224', 0, **TINY)})
    monkeypatch.setattr(hf, 'HF_HUB_CACHE', str(cache)); monkeypatch.setattr(hf, 'HF_HUB_OFFLINE', True)
    return cache

def snapshot(cache, commit=C1) -> Path:
    return cache/f"models--{REPO.replace('/', '--')}"/'snapshots'/commit/'model.safetensors'

def refused(args, capsys) -> str:
    "at_eval's one error line for `args` (exit status 1)."
    code, out, err = cli(at_eval, args, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, (code, out, err)
    return err


# -- 1. a teacher that is not the recorded one: what differs

def test_a_hub_teacher_that_changed_shows_its_sha256_and_only_a_revision_that_differs(hub, tmp_path, capsys):
    torch.manual_seed(0)
    t = create_teacher(MAE, **TINY); pair = AttentionDistill(t, create_student(t, num_classes=10))
    ck = save_student(pair, tmp_path/'student.pth', classes=CLASSES, data=DIGITS)
    was = sha(snapshot(hub))
    assert checkpoint_meta(ck)['teacher']['pretrained']['sha256'] == was
    put(hub, REPO, {'model.safetensors': weights('vit_base_patch16_224', 9, **TINY)}, C1)  # other bytes, same commit
    now = sha(snapshot(hub))
    for extra, start in (([], f"{ck}: its teacher {MAE}"), (['--teacher', MAE], f"--teacher {MAE}")):
        err = refused([ck, '--attention', 8, '--num_workers', 0, *extra], capsys)
        assert start in err and f"(SHA-256 {now[:12]}, recorded {was[:12]}): give the original weights" in err, err
        assert 'revision' not in err, err  # on main: "revision C1 ... revision C1", the same twice
    put(hub, REPO, {'model.safetensors': weights('vit_base_patch16_224', 9, **TINY)}, C2)  # a new commit
    err = refused([ck, '--attention', 8, '--num_workers', 0], capsys)
    assert f"(SHA-256 {now[:12]}, recorded {was[:12]}; revision {C2}, recorded {C1})" in err, err

def test_a_teacher_file_that_differs_shows_both_sha256s(tmp_path, capsys):
    torch.manual_seed(0)
    t = create_teacher(NANO, None, num_classes=10); tfile = save_timm_checkpoint(t, tmp_path/'teacher.pth')
    ck = save_student(AttentionCopy(t, create_model(NANO, None, num_classes=10)), tmp_path/'copy.pth', tfile, CLASSES,
                      DIGITS)
    other = save_timm_checkpoint(create_model(NANO, None, num_classes=10), tmp_path/'other.pth')
    was, now = sha(tfile), sha(other)
    err = refused([ck, '--teacher', other, '--num_workers', 0], capsys)
    assert f"--teacher {other} is not the teacher of {ck} (SHA-256 {now[:12]}, recorded {was[:12]})" in err, err
    shutil.copy(other, tfile)  # the recorded file, changed in place: the same path twice would say nothing
    err = refused([ck, '--num_workers', 0], capsys)
    assert f"{tfile}, which has changed since (SHA-256 {now[:12]}, recorded {was[:12]}): pass --teacher PATH" in err, err


# -- 2. the evaluation split's identity, recorded in the checkpoint

def folder(root:Path) -> Path:
    "An ImageFolder of 3 brightness classes: 2 training and 2 validation images of 32 pixels each."
    for split in ('train', 'val'):
        for c, level in zip('abc', (20, 120, 220)):
            (root/split/c).mkdir(parents=True)
            for i in range(2): Image.new('RGB', (32, 32), (level + 10 * i,) * 3).save(root/split/c/f'{i}.png')
    return root

def test_a_copied_checkpoint_refuses_a_changed_split_from_its_record_alone(tmp_path, capsys):
    data = folder(tmp_path/'data')
    code, out, err = cli(at_train, ['--model', NANO, '--data_path', data, '--input_size', 32, '--epochs', 1,
                                    '--steps_per_epoch', 1, '--batch_size', 4, '--num_workers', 0, '--warmup_epochs', 0,
                                    '--aa', 'none', '--attn_probe', 0, '--output_dir', tmp_path/'run'], capsys)
    assert code == 0, err
    d = checkpoint_meta(tmp_path/'run'/'model.pth')['data']
    assert (d['name'], d['split'], d['input_size'], d['n'], len(d['mean'])) == (str(data.resolve()), 'val', 32, 6, 3)
    assert checkpoint_meta(tmp_path/'run'/'checkpoint.pth')['data'] == d
    rec = json.loads((tmp_path/'run'/'log.jsonl').read_text().splitlines()[-1])
    moved = tmp_path/'elsewhere'/'model.pth'; moved.parent.mkdir(); shutil.copy(tmp_path/'run'/'model.pth', moved)
    code, out, err = cli(at_eval, [moved, '--num_workers', 0], capsys)  # no data flag: the recorded data
    assert code == 0 and f"top1 {rec['test_top1']:.2f}" in out and '(6 images)' in out, (out, err)
    (data/'val'/'b'/'1.png').unlink()  # the split changed since the run
    err = refused([moved, '--num_workers', 0], capsys)  # on main: scored on 5 images, exit 0 (no log.jsonl beside it)
    assert f"{moved}: its run scored 6 test images (its description)" in err and 'now holds 5' in err, err
    old = torch.load(moved, map_location='cpu', weights_only=True); del old['meta']['data']['n']
    torch.save(old, tmp_path/'old.pth')  # as main wrote it: no count, no log beside it: evaluated, as before
    code, out, err = cli(at_eval, [tmp_path/'old.pth', '--num_workers', 0], capsys)
    assert code == 0 and '(5 images)' in out, (out, err)


# -- 3. a checkpoint of one's own loop, through timm's task contract

def own_loop_checkpoint(task, folder:Path) -> Path:
    "The checkpoint timm's `CheckpointSaver` writes for `task` after epoch 0, as timm's train.py saves it."
    opt = create_optimizer_v2(task.get_trainable_module(), 'adamw', lr=1e-3)
    CheckpointSaver(task.get_trainable_module(), opt, checkpoint_dir=str(folder), task=task).save_checkpoint(epoch=0)
    return folder/'last.pth.tar'

def test_an_own_loop_checkpoint_takes_a_data_flag(tmp_path, capsys):
    torch.manual_seed(0)
    t = create_teacher(NANO, save_timm_checkpoint(create_model(NANO, None, num_classes=10), tmp_path/'t.pth'))
    path = own_loop_checkpoint(build_task('copy', create_model(NANO, None, num_classes=10), t), tmp_path)
    assert torch.load(path, weights_only=True)['task_state']['data'] is None  # the task never saw the data
    err = refused([path, '--num_workers', 0], capsys)  # nothing guessed: the flags to give
    assert f"{path} does not say which data it was trained on: give --data NAME, --data_path FOLDER or --dataset NAME" in err
    code, out, err = cli(at_eval, [path, '--data', 'digits', '--num_workers', 0], capsys)
    assert code == 0 and '(540 images)' in out, (out, err)

def test_an_own_loop_teacher_by_name_gives_the_mean_and_std(hub, tmp_path, capsys):
    torch.manual_seed(0)
    t = create_teacher(MAE, **TINY); s = create_student(t, num_classes=10)
    with torch.no_grad(): s.head.weight.mul_(50)  # confident logits: the loss tells the normalisations apart
    task = build_task('distill', s, t)
    path = own_loop_checkpoint(task, tmp_path)
    code, out, err = cli(at_eval, [path, '--data', 'digits', '--num_workers', 0, '--output', tmp_path/'r.json'], capsys)
    assert code == 0, err
    got = json.loads((tmp_path/'r.json').read_text())[str(path)]
    named, arch = (timm.models.get_pretrained_cfg(n).to_dict() for n in (MAE, 'vit_base_patch16_224'))
    assert named['mean'] != arch['mean']  # the MAE's ImageNet mean, not the default tag's 0.5
    loss = {}
    for which, cfg in (('named', named), ('arch', arch)):  # the digits as at_train makes them for each
        norm = {k: cfg[k] for k in ('mean', 'std', 'crop_pct', 'interpolation')}
        dv, _ = build_dataset('digits', False, 32, model=norm)
        loss[which] = ens.evaluate(task.student.eval(), build_loader(dv, 128, train=False))['model']['loss']
    assert got['loss'] == pytest.approx(loss['named'], rel=1e-6), loss  # on main: the architecture's 0.5
    assert abs(loss['named'] - loss['arch']) > 1e-2, loss
