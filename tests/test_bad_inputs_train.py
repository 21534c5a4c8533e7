"""Bad input to `at_train` and `at_pretrain`, run as a user runs them: every numeric flag out of its range, bad names,
output locations that cannot be written or hold another run, and resumes that would continue another run. Each is
refused with one line naming the flag or file, before any work, and leaves the earlier good runs untouched
(harness: `tests/_bad_inputs.py`: each case in a fork of this process; the cases with `real=True` also as the installed
console script in a new process). Tiny models on `digits`; the good runs are made once per module."""
import os, stat, tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import pytest, timm, torch
import attention_transfer.vit  # noqa: F401  (registers vit_nano_patch4_32)
from attention_transfer.cli import RANGES
from _bad_inputs import assert_refused, run, run_forked

TRAIN = ['--model', 'vit_nano_patch4_32', '--data', 'digits', '--epochs', 1, '--steps_per_epoch', 2, '--batch_size', 8,
         '--num_workers', 0, '--warmup_epochs', 0]
PRETRAIN = ['--model', 'vit_nano_patch4_32', '--data', 'digits', '--epochs', 1, '--steps_per_epoch', 2, '--batch_size', 16,
            '--warmup_epochs', 0, '--decoder_dim', 32, '--decoder_depth', 1]


@pytest.fixture(scope='module')
def good(tmp_path_factory):
    "Two teachers (same architecture, other weights), and three good runs: scratch (1 of 2 epochs), copy (finished), MAE (1 of 2)."
    root = tmp_path_factory.mktemp('good')
    for i, name in enumerate(('teacher_a.pth', 'teacher_b.pth')):
        torch.manual_seed(i)
        torch.save({'model': timm.create_model('vit_nano_patch4_32', num_classes=0).state_dict()}, root/name)
    jobs = [('at_train', *TRAIN, '--epochs', 2, '--stop_epoch', 1, '--output_dir', root/'scratch'),
            ('at_train', *TRAIN, '--mode', 'copy', '--finetune', root/'teacher_a.pth', '--output_dir', root/'copy'),
            ('at_pretrain', *PRETRAIN, '--epochs', 2, '--stop_epoch', 1, '--output_dir', root/'mae')]
    with ThreadPoolExecutor(2) as ex:
        for r in ex.map(lambda a: run(*a), jobs): assert r.returncode == 0, r.stderr[-3000:]
    assert (root/'copy'/'model.pth').is_file() and not (root/'scratch'/'model.pth').exists()
    return root


# -- every numeric flag out of its range, one line naming the flag, before any work (exit 1: the library's check)
# one value per flag (both sides of every interval, NaN and the 2**32 seed bound: `check_ranges`'s tests in 10_command);
# negative values that argparse takes for options (-1e-6) are refused by the parser itself (exit 2, naming the flag)
TRAIN_FLAGS = [('batch_size', 0), ('epochs', 0), ('accum_iter', 0), ('steps_per_epoch', 0), ('stop_epoch', 0), ('blr', 0),
               ('lr', -1), ('min_lr', -1), ('warmup_epochs', 2), ('layer_decay', 1.5), ('beta2', 1), ('weight_decay', -0.1),
               ('clip_grad', 0), ('drop_path', 1.5), ('ema', 1),
               ('atd_weight', -1), ('reprob', 1.5), ('mixup', -0.5), ('cutmix', -1), ('smoothing', 1.5), ('nb_classes', 0),
               ('input_size', 0), ('end_layer', 1), ('layers', -1), ('heads', -1), ('relation_heads', 0), ('num_workers', -1), ('seed', -1),
               ('attn_probe', -1)]
PRETRAIN_FLAGS = [('batch_size', 0), ('epochs', 0), ('accum_iter', 0), ('steps_per_epoch', 0), ('stop_epoch', 0), ('blr', -1),
                  ('lr', 0), ('min_lr', -1), ('warmup_epochs', 2), ('weight_decay', -1), ('beta2', 1.5), ('clip_grad', -1),
                  ('drop_path', 1.5), ('input_size', 0), ('min_scale', 0), ('hflip', 1.5), ('seed', -1), ('num_workers', -1),
                  ('mask_ratio', 1), ('decoder_dim', 0), ('decoder_depth', 0), ('decoder_heads', 0), ('decoder_heads', 33)]


def pretrain_ranges() -> dict:
    "at_pretrain's range table, beside its config."
    from attention_transfer.pretrain import PRETRAIN_RANGES
    return PRETRAIN_RANGES


def test_the_cases_cover_every_range():
    "Every flag of each tool's range table is tested here (`cli.RANGES`, `pretrain.PRETRAIN_RANGES`)."
    from dataclasses import fields
    from attention_transfer.cli import TrainConfig
    from attention_transfer.pretrain import PretrainConfig
    for cls, ranges, cases in ((TrainConfig, RANGES, TRAIN_FLAGS), (PretrainConfig, pretrain_ranges(), PRETRAIN_FLAGS)):
        flags = {f.name for f in fields(cls)} & set(ranges)
        assert flags == {k for k, _ in cases}, flags ^ {k for k, _ in cases}


@pytest.mark.parametrize('flag,value', TRAIN_FLAGS, ids=[f'{k}={v}' for k, v in TRAIN_FLAGS])
def test_at_train_flag_out_of_range(flag, value, tmp_path):
    assert_refused('at_train', *TRAIN, f'--{flag}', value, '--output_dir', tmp_path/'out', code=1,
                   names=[f'--{flag} must be in {RANGES[flag]}'], absent=[tmp_path/'out'], real=flag == 'batch_size')


@pytest.mark.parametrize('flag,value', PRETRAIN_FLAGS, ids=[f'{k}={v}' for k, v in PRETRAIN_FLAGS])
def test_at_pretrain_flag_out_of_range(flag, value, tmp_path):
    assert_refused('at_pretrain', *PRETRAIN, f'--{flag}', value, '--output_dir', tmp_path/'out', code=1,
                   names=[f'--{flag} must be in {pretrain_ranges()[flag]}'], absent=[tmp_path/'out'], real=flag == 'batch_size')


NAMES = [('at_train', ['--amp', 'fp8'], '--amp'), ('at_train', ['--aa', 'foo'], '--aa'),
         ('at_train', ['--layer_decay_rule', 'beit'], '--layer_decay_rule'), ('at_train', ['--target', 'x'], '--target'),
         ('at_train', ['--mode', 'transfer'], '--mode'), ('at_train', ['--input_size', 30], '--input_size 30'),
         ('at_pretrain', ['--amp', 'fp8'], '--amp'), ('at_pretrain', ['--decoder_pos', 'x'], '--decoder_pos'),
         ('at_pretrain', ['--decoder_dim', 48, '--decoder_heads', 5], '--decoder_heads')]


@pytest.mark.parametrize('prog,args,name', NAMES, ids=[f'{p}{a}' for p, a, _ in NAMES])
def test_bad_names_and_sizes(prog, args, name, tmp_path):
    assert_refused(prog, *(TRAIN if prog == 'at_train' else PRETRAIN), *args, '--output_dir', tmp_path/'out', code=1,
                   names=[name], absent=[tmp_path/'out'])


@pytest.mark.parametrize('args,name', [(['--end_layer', -2], '--end_layer'), (['--layers', 0, 2], '--layers'), (['--heads', 2], '--heads')])
def test_transferred_layers_and_heads_beyond_the_model(good, args, name, tmp_path):
    "vit_nano_patch4_32 has 2 blocks of 2 heads: checked against the teacher as soon as it is built, before training."
    assert_refused('at_train', *TRAIN, '--mode', 'copy', '--finetune', good/'teacher_a.pth', *args, '--output_dir', tmp_path/'out',
                   code=1, names=[name, 'out of range'], absent=[tmp_path/'out'])


# -- settings a method does not take, and --eval without the student's weights: read from the method table (methods.METHODS)
NOT_APPLICABLE = [(['--atd_weight', 5], '--atd_weight does not apply to --mode scratch'),
                  (['--mode', 'distill_features', '--heads', 0], '--heads does not apply to --mode distill_features'),
                  (['--mode', 'logit_kd', '--target', 'q'], '--target does not apply to --mode logit_kd'),
                  (['--teacher', 'vit_pico_patch4_32'], '--teacher does not apply to --mode scratch'),   # refused, not recorded as null
                  (['--mode', 'finetune', '--teacher', 'vit_pico_patch4_32'], '--teacher does not apply to --mode finetune'),
                  (['--mode', 'logit_kd', '--eval'], '--eval needs weights'), (['--mode', 'copy', '--eval'], '--eval needs weights')]


@pytest.mark.parametrize('args,name', NOT_APPLICABLE, ids=[' '.join(map(str, a)) for a, _ in NOT_APPLICABLE])
def test_settings_a_method_does_not_take(good, args, name, tmp_path):
    teacher = [] if '--mode' not in args else ['--finetune', good/'teacher_a.pth']
    assert_refused('at_train', *TRAIN, *args, *teacher, '--output_dir', tmp_path/'out', code=1, names=[name], absent=[tmp_path/'out'])


# -- output locations: checked before any work, for at_train and at_pretrain alike
def _unwritable(tmp_path):
    "A folder this process cannot write: a read-only one, or for root (who writes read-only folders) /sys or /proc."
    if os.geteuid() != 0:
        d = tmp_path/'readonly'; d.mkdir(); d.chmod(stat.S_IRUSR | stat.S_IXUSR)
        return d
    for d in (Path('/sys'), Path('/proc')):
        try: tempfile.TemporaryFile(dir=d).close()
        except OSError: return d
    pytest.skip('running as root, and no folder on this machine is unwritable for root')


@pytest.mark.parametrize('prog', ['at_train', 'at_pretrain'])
@pytest.mark.parametrize('where', ['existing file', 'under a file', 'read-only folder', 'read-only parent'])
def test_output_dir_that_cannot_be_written(prog, where, tmp_path):
    (tmp_path/'file').write_text('not a folder')
    ro = _unwritable(tmp_path) if where.startswith('read-only') else None
    out = {'existing file': tmp_path/'file', 'under a file': tmp_path/'file'/'run', 'read-only folder': ro,
           'read-only parent': None if ro is None else ro/'at_test_run'}[where]
    try:
        assert_refused(prog, *(TRAIN if prog == 'at_train' else PRETRAIN), '--output_dir', out, code=1, names=['--output_dir', str(out)],
                       watch=[tmp_path], absent=[out] if where in ('under a file', 'read-only parent') else [])
    finally:
        if ro is not None and ro.is_relative_to(tmp_path): ro.chmod(stat.S_IRWXU)


@pytest.mark.parametrize('prog,run_', [('at_train', 'scratch'), ('at_train', 'copy'), ('at_pretrain', 'mae')])
def test_output_dir_of_another_run_is_not_overwritten(good, prog, run_):
    "A new run into the folder of an earlier one, without --resume, would overwrite it: refused, the folder kept."
    extra = ['--mode', 'copy', '--finetune', good/'teacher_a.pth'] if run_ == 'copy' else []
    assert_refused(prog, *(TRAIN if prog == 'at_train' else PRETRAIN), *extra, '--output_dir', good/run_, code=1,
                   names=['--output_dir', 'holds another run', '--resume'], watch=[good])


# -- resumes that would continue another run: every setting that makes the run what it is, named
COPY_MISMATCH = [(['--mode', 'distill'], ['--mode copy', '--mode distill', 'no --atd_weight;', '--atd_weight 3.0']),
                 (['--model', 'vit_pico_patch4_32'], ['--model vit_nano_patch4_32', '--model vit_pico_patch4_32']),
                 (['--nb_classes', 12], ['--nb_classes 10', '--nb_classes 12']),
                 (['--teacher', 'vit_pico_patch4_32'], ['--teacher vit_nano_patch4_32', '--teacher vit_pico_patch4_32']),
                 (['--finetune', 'teacher_b.pth'], ['teacher weights sha256']),
                 (['--target', 'q'], ['--target attn', '--target q']),
                 (['--end_layer', -1], ['--end_layer 0', '--end_layer -1']),
                 (['--layers', 0], ['no --layers;', '--layers [0]']),
                 (['--heads', 1], ['no --heads;', '--heads [1]']),
                 (['--cls_token'], ['--global_pool avg', '--global_pool token']),
                 (['--input_size', 16], ['--input_size 32', '--input_size 16']),
                 (['--lr', 0.01], ['no --lr (its lr from --blr)', '--lr 0.01']),      # what is learnt: optimisation,
                 (['--smoothing', 0], ['--smoothing 0.1', '--smoothing 0']),         # the loss,
                 (['--aa', 'none'], ['--aa rand-m9-mstd0.5-inc1', '--aa none']),     # augmentation,
                 (['--seed', 1], ['--seed 0', '--seed 1'])]                          # and the seed


@pytest.mark.parametrize('args,names', COPY_MISMATCH, ids=[' '.join(map(str, a)) for a, _ in COPY_MISMATCH])
def test_resume_of_another_copy_run(good, args, names):
    "The finished copy run, resumed in place with one setting changed: refused naming it, the run's files untouched."
    args = [good/a if str(a).endswith('.pth') else a for a in args]
    finetune = [] if '--finetune' in args else ['--finetune', good/'teacher_a.pth']
    assert_refused('at_train', *TRAIN, '--mode', 'copy', *finetune, *args, '--resume', 'allow', '--output_dir', good/'copy',
                   code=1, names=['--resume', 'is another run', *names], watch=[good])


def test_scratch_checkpoint_resumed_as_distillation(good, tmp_path):
    "The case found in the issue: a scratch checkpoint resumed into --mode distill (in place, and into a new folder)."
    for out, absent in ((good/'scratch', []), (tmp_path/'new', [tmp_path/'new'])):
        assert_refused('at_train', *TRAIN, '--epochs', 2, '--mode', 'distill', '--finetune', good/'teacher_a.pth',
                       '--resume', good/'scratch'/'checkpoint.pth', '--output_dir', out, code=1,
                       names=['is another run', '--mode scratch', '--mode distill'], watch=[good], absent=absent)


def test_resume_with_another_class_count_and_no_epochs_left(good):
    "A finished 10-class run resumed as a 12-class one (the classifier would have been replaced silently): refused."
    assert_refused('at_train', *TRAIN, '--mode', 'copy', '--finetune', good/'teacher_a.pth', '--nb_classes', 12, '--resume',
                   good/'copy'/'checkpoint.pth', '--output_dir', good/'copy', code=1, names=['--nb_classes 10', '--nb_classes 12'],
                   watch=[good])


# issue 21's trial: another batch, accumulation, epoch length or schedule made a resumed run silently another run
SCRATCH_BATCH = [(['--batch_size', 4], ['--batch_size 8 x --accum_iter 1 x 1 process', '--batch_size 4 x --accum_iter 1']),
                 (['--accum_iter', 2], ['average 8 images', '--accum_iter 1', 'average 16', '--accum_iter 2']),
                 (['--batch_size', 4, '--accum_iter', 2],  # the same 8 per update, but half the images an epoch
                  ['--steps_per_epoch 2 micro-batches of --batch_size 8 x 1 process: 16 images an epoch',
                   '--steps_per_epoch 2 micro-batches of --batch_size 4 x 1 process: 8 images an epoch']),
                 (['--steps_per_epoch', 3], ['--steps_per_epoch 2 micro-batches of', '--steps_per_epoch 3 micro-batches of']),
                 (['--epochs', 3], ['--epochs 2, 1 trained', '--epochs 3', '--stop_epoch'])]


@pytest.mark.parametrize('args,names', SCRATCH_BATCH, ids=[' '.join(map(str, a)) for a, _ in SCRATCH_BATCH])
def test_resume_with_other_updates_or_schedule(good, args, names):
    "The scratch run (1 of 2 epochs, batch 8, 2 steps an epoch), resumed with other updates: refused naming both values."
    assert_refused('at_train', *TRAIN, '--epochs', 2, *args, '--resume', 'allow', '--output_dir', good/'scratch', code=1,
                   names=['--resume', 'is another run', *names], watch=[good], real=args == ['--batch_size', 4])


PRETRAIN_MISMATCH = [(['--decoder_depth', 2], ['--decoder_depth 1', '--decoder_depth 2']),
                     (['--decoder_dim', 64], ['--decoder_dim 32', '--decoder_dim 64']),
                     (['--mask_ratio', 0.5], ['--mask_ratio 0.75', '--mask_ratio 0.5']),
                     (['--norm_pix_loss', 'false'], ['--norm_pix_loss True', '--norm_pix_loss False']),
                     (['--model', 'vit_pico_patch4_32'], ['--model vit_nano_patch4_32', '--model vit_pico_patch4_32']),
                     (['--input_size', 16], ['--input_size 32', '--input_size 16'])]


@pytest.mark.parametrize('args,names', PRETRAIN_MISMATCH, ids=[' '.join(map(str, a)) for a, _ in PRETRAIN_MISMATCH])
def test_resume_of_another_mae(good, args, names):
    assert_refused('at_pretrain', *PRETRAIN, '--epochs', 2, *args, '--resume', 'allow', '--output_dir', good/'mae', code=1,
                   names=['--resume', 'is another run', *names], watch=[good])


def test_resume_across_tools(good, tmp_path):
    "An MAE checkpoint is not a classifier's run, and a classifier's is not an MAE's."
    assert_refused('at_train', *TRAIN, '--resume', good/'mae'/'checkpoint.pth', '--output_dir', tmp_path/'t', code=1,
                   names=['is another run', '--mode pretrain'], watch=[good], absent=[tmp_path/'t'])
    assert_refused('at_pretrain', *PRETRAIN, '--resume', good/'scratch'/'checkpoint.pth', '--output_dir', tmp_path/'p', code=1,
                   names=['not an at_pretrain checkpoint'], watch=[good], absent=[tmp_path/'p'], real=True)


# -- issue 23: a finished run resumed into another folder, --head_map, and --share_drop_path with a teacher of another depth
def test_finished_run_resumed_into_another_folder(good, tmp_path):
    "Nothing is left to train: refused in one line, nothing written there (in its own folder: tests/test_trust_eval.py)."
    assert_refused('at_train', *TRAIN, '--mode', 'copy', '--finetune', good/'teacher_a.pth', '--resume', good/'copy'/'checkpoint.pth',
                   '--output_dir', tmp_path/'new', code=1, names=['--resume', 'already finished', '--output_dir', str(tmp_path/'new')],
                   watch=[good], absent=[tmp_path/'new'], real=True)


@pytest.fixture(scope='module')
def deep_teacher(tmp_path_factory):
    "A 6-block, 4-head vit_pico_patch4_32 teacher for the 2-block, 2-head vit_nano_patch4_32."
    p = tmp_path_factory.mktemp('deep')/'pico.pth'
    torch.manual_seed(0); torch.save({'model': timm.create_model('vit_pico_patch4_32', num_classes=0).state_dict()}, p)
    return p


@pytest.mark.parametrize('args,names', [(['--head_map', '0:0', '1:9'], ['--head_map', 'out of range']),
                                        (['--head_map', '0:0', '2:1'], ['--head_map 0:0 2:1', 'from 0 on']),
                                        (['--head_map', '0:0,1'], ['--head_map', '1 entries but the student has 2 heads'])])
def test_bad_head_map(deep_teacher, args, names, tmp_path):
    assert_refused('at_train', *TRAIN, '--mode', 'distill', '--teacher', 'vit_pico_patch4_32', '--finetune', deep_teacher, *args,
                   '--output_dir', tmp_path/'out', code=1, names=names, absent=[tmp_path/'out'])


@pytest.mark.parametrize('preset', ['copy', 'distill'])
def test_preset_share_drop_path_with_a_deeper_teacher(deep_teacher, preset, tmp_path):
    "The presets share drop-path masks, block by block: with a deeper teacher, refused naming the way out."
    assert_refused('at_train', '--preset', preset, *TRAIN, '--end_layer', 0, '--teacher', 'vit_pico_patch4_32', '--finetune', deep_teacher,
                   '--output_dir', tmp_path/'out', code=1, absent=[tmp_path/'out'],
                   names=['--share_drop_path', 'teacher as deep as the student', 'add --share_drop_path false'])


# -- the new-user trial of issue 21 (session 9): the data flags, a changed training folder, checks before the models
@pytest.mark.parametrize('args,names', [
    (['--data_path', '/nonexistent'], ['--data_path /nonexistent', 'neither a built-in dataset', 'nor an existing folder']),
    (['--data_path', 'digits', '--data', 'digits'], ['--data digits and --data_path', 'give one of --data, --data_path, --dataset'])])
def test_bad_data_flags(args, names, tmp_path):
    "The flag at fault named, and said before the teacher is built: nothing on stdout (no note about its pooling)."
    targs = [a for a in TRAIN if a not in ('--data', 'digits')]
    assert_refused('at_train', *targs, *args, '--output_dir', tmp_path/'out', code=1, names=names, absent=[tmp_path/'out'])
    r = run_forked('at_train', *targs, *args, '--output_dir', tmp_path/'out')
    assert r.returncode == 1 and r.stdout == '', r.stdout


def _folder(root:Path, n:int) -> Path:
    "An ImageFolder of `n` training and 4 test 32-pixel images of two classes."
    from PIL import Image
    for split, k in (('train', n), ('val', 4)):
        for i in range(k):
            (root/split/f'c{i % 2}').mkdir(parents=True, exist_ok=True)
            Image.new('RGB', (32, 32), (40 + 150 * (i % 2), i, 0)).save(root/split/f'c{i % 2}'/f'{i}.png')
    return root


def test_resume_with_a_changed_training_folder(tmp_path):
    "An image added to the training folder between a run and its resume: refused naming --data_path and both sizes."
    args = [a for a in TRAIN if a not in ('--data', 'digits')]
    data = _folder(tmp_path/'imgs', 8)
    r = run('at_train', *args, '--data_path', data, '--epochs', 2, '--stop_epoch', 1, '--output_dir', tmp_path/'run')
    assert r.returncode == 0, r.stderr[-3000:]
    _folder(tmp_path/'imgs', 9)  # one more
    assert_refused('at_train', *args, '--data_path', data, '--epochs', 2, '--resume', 'allow', '--output_dir', tmp_path/'run',
                   code=1, names=['is another run', f'8 images of --data_path {data}', 'has 9'], watch=[tmp_path/'run'])


def test_finished_run_refused_before_the_models(good, tmp_path):
    "The finished-run refusal comes before the teacher is built: nothing printed before the error line."
    r = run_forked('at_train', *TRAIN, '--mode', 'copy', '--finetune', good/'teacher_a.pth', '--resume', good/'copy'/'checkpoint.pth',
                   '--output_dir', tmp_path/'new')
    assert r.returncode == 1 and 'already finished' in r.stderr and r.stdout == '', (r.stdout, r.stderr)
