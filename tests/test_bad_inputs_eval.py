"""Bad input to `at_eval` and `at_demo`, through the shared harness (`tests/_bad_inputs.py`): each case exits non-zero
with one `prog: error: ...` line naming the flag or file at fault, no traceback, watched files untouched and nothing
half-written (each case in a fork of this process; those with `real=True` also as the installed script). at_eval's checkpoints are made here in-process (random weights: what is tested is the refusal), with the
same descriptions that at_demo and at_train write; `tests/test_demo.py` has the at_demo cases not repeated here."""
import shutil
from pathlib import Path
import pytest, torch
from PIL import Image
from _bad_inputs import assert_refused, run
from attention_transfer.models import create_model, create_teacher, save_timm_checkpoint, model_meta, save_student
from attention_transfer.transfer import AttentionCopy
from attention_transfer.vit import MNIST_MEAN, MNIST_STD

MODEL, KW = 'vit_pico_patch7_28', dict(num_classes=10, global_pool='avg', depth=2)
CLASSES = [str(i) for i in range(10)]
DIGITS = dict(name='digits', split='test', holdout=0, input_size=28, mean=list(MNIST_MEAN), std=list(MNIST_STD), pipeline='tensor')


def _student(path, seed, data=DIGITS, classes=CLASSES, **kw):
    torch.manual_seed(seed)
    s = create_model(MODEL, None, **{**KW, **kw})
    return save_timm_checkpoint(s, path, model_meta(s, 'scratch', classes=classes, data=data))


def _copy_run(root:Path, seed:int=0) -> Path:
    "A run folder with teacher/encoder.pth and students/copy.pth, whose description points at the teacher."
    torch.manual_seed(seed)
    t = create_teacher(MODEL, None, **KW); save_timm_checkpoint(t, root/'teacher'/'encoder.pth')
    save_student(AttentionCopy(t, create_model(MODEL, None, **KW), end_layer=-1), root/'students'/'copy.pth', root/'teacher'/'encoder.pth', CLASSES, DIGITS)
    return root/'students'/'copy.pth'


@pytest.fixture(scope='module')
def ck(tmp_path_factory):
    root = tmp_path_factory.mktemp('bad_eval')
    c = dict(copy=_copy_run(root/'run'), scratch=_student(root/'run'/'students'/'scratch.pth', 1),
             mnist=_student(root/'other'/'mnist.pth', 2, data={**DIGITS, 'name': 'mnist5k'}),
             wide=_student(root/'other'/'wide.pth', 3, classes=None, num_classes=12),
             letters=_student(root/'other'/'letters.pth', 4, classes=list('abcdefghij')))
    c['lost'] = _copy_run(root/'lost'); (root/'lost'/'teacher'/'encoder.pth').unlink()
    c['changed'] = _copy_run(root/'changed')
    torch.manual_seed(9); save_timm_checkpoint(create_teacher(MODEL, None, **KW), root/'changed'/'teacher'/'encoder.pth')  # another teacher, same place
    torch.manual_seed(5); torch.save(create_model(MODEL, None, num_classes=10, global_pool='avg').state_dict(), root/'other'/'plain.pth')  # no description
    c['plain'] = root/'other'/'plain.pth'
    (root/'other'/'trunc.pth').write_bytes(c['scratch'].read_bytes()[:3000]); c['trunc'] = root/'other'/'trunc.pth'
    (root/'prev').mkdir(); (root/'prev'/'eval.json').write_text('{"earlier": "result"}\n'); c['prev'] = root/'prev'
    for split in ('train', 'val'):                                  # other images with other classes
        for cls in ('ant', 'bee'):
            (root/'abfolder'/split/cls).mkdir(parents=True)
            Image.new('RGB', (28, 28)).save(root/'abfolder'/split/cls/'0.png')
    c['root'] = root
    return c


def test_good_inputs_work(ck):
    "The fixtures are sound: the same checkpoints evaluate when nothing is wrong (also the moved-teacher case with --teacher)."
    r = run('at_eval', ck['copy'], ck['scratch'], '--output', ck['root']/'new'/'ok.json')   # a missing folder is made
    assert r.returncode == 0 and 'ensemble (prob): top1' in r.stdout and (ck['root']/'new'/'ok.json').is_file(), r.stderr[-2000:]
    r = run('at_eval', ck['lost'], '--teacher', ck['root']/'run'/'teacher'/'encoder.pth')  # the same weights: seed 0 in both runs
    assert r.returncode == 0, r.stderr[-2000:]
    r = run('at_eval', ck['plain'], '--model', MODEL, '--data', 'digits', '--input_size', '28', '--num_workers', '0')
    assert r.returncode == 0 and '(540 images)' in r.stdout, r.stderr[-2000:]


def test_copy_student_without_its_teacher(ck):
    "Never scored as a plain ViT: refused, naming the flag that supplies the teacher."
    assert_refused('at_eval', ck['lost'], names=['--teacher', str(ck['lost'])], code=1, watch=[ck['root']/'lost'])


def test_copy_student_with_another_teacher(ck):
    assert_refused('at_eval', ck['changed'], names=['--teacher', 'SHA-256'], code=1, watch=[ck['root']/'changed'])
    assert_refused('at_eval', ck['copy'], '--teacher', ck['root']/'changed'/'teacher'/'encoder.pth', names=['--teacher', 'SHA-256'], code=1)
    assert_refused('at_eval', ck['copy'], '--teacher', ck['root']/'nope.pth', names=['--teacher', 'nope.pth'], code=1)


@pytest.mark.parametrize('where, names', [
    ('prev/eval.json', ['--output', 'exists']),              # an earlier result: never overwritten
    ('prev/eval.json/x.json', ['--output', 'is a file']),    # under a file
    ('prev/eval.json/sub/x.json', ['--output', 'is a file']),
    ('/sys/at_eval.json', ['--output', 'cannot write']),     # a folder nobody may write in (root included)
])
def test_output_location(ck, where, names):
    "Checked before anything is evaluated: nothing is written, the earlier result is untouched."
    out = Path(where) if where.startswith('/') else ck['root']/where
    assert_refused('at_eval', ck['scratch'], '--output', out, names=names, code=1, watch=[ck['prev']],
                   absent=[] if out.parent.exists() and out.name == 'eval.json' else [out])


@pytest.mark.parametrize('args, names, code', [
    (['--batch_size', '0'], ['--batch_size'], 1), (['--num_workers', '-1'], ['--num_workers'], 1),
    (['--how', 'x'], ['--how', 'prob'], 1), (['--amp', 'fp8'], ['--amp'], 1), (['--input_size', '0'], ['--input_size'], 1),
    (['--batch_size', 'ten'], ['--batch_size'], 2), (['--bogus'], ['--bogus'], 2),
    (['--model', 'vit_nano_patch4_32'], ['--model', MODEL], 1),      # contradicts the file
    (['--input_size', '32'], ['--input_size'], 1),                  # contradicts the file
    (['--data', 'digits', '--data_path', 'x'], ['--data'], 1),
    (['--data', 'mnist5k'], ['--data mnist5k', 'contradicts', 'digits'], 1),  # another built-in set than the recorded one
    (['--ema'], ['EMA'], 1),                                         # a model file holds no EMA weights
])
def test_bad_flags(ck, args, names, code):
    out = ck['root']/'flags.json'
    assert_refused('at_eval', ck['scratch'], *args, '--output', out, names=names, code=code, absent=[out], real=args == ['--bogus'])


def test_other_images_with_other_classes(ck):
    "--data_path evaluates on other images only when they have the checkpoint's classes."
    assert_refused('at_eval', ck['scratch'], '--data_path', ck['root']/'abfolder', names=['--data_path', 'ant', "'0'"], code=1)


def test_attention_with_a_teacher_that_cannot_be_mapped(tmp_path):
    """--attention compares through the layer and head maps (issue 23, item 10); a teacher whose 3 heads cannot be grouped onto
    the student's 4 is refused in one line, before evaluating. (A teacher of another depth is compared: tests/test_trust_eval.py.)"""
    torch.manual_seed(0)
    t = create_teacher(MODEL, None, **{**KW, 'num_heads': 3, 'embed_dim': 48}); save_timm_checkpoint(t, tmp_path/'teacher.pth')
    s = create_model(MODEL, None, **KW)
    p = save_timm_checkpoint(s, tmp_path/'kd.pth', model_meta(s, 'logit_kd', None, t, tmp_path/'teacher.pth', CLASSES, DIGITS))
    out = tmp_path/'att.json'
    assert_refused('at_eval', p, '--attention', '4', '--output', out, code=1, absent=[out],
                   names=['--attention', str(p), '(2 blocks of 3 heads) cannot be mapped onto its student (2 blocks of 4 heads)', 'split evenly'])


def test_checkpoint_without_a_trained_classifier(ck, tmp_path):
    """An encoder (MAE's format, no head) is not scored as a classifier: one line naming it and --attention, exit 1, before
    evaluating (issue 23, item 1); in an ensemble too. `tests/test_trust_eval.py` compares its attention."""
    torch.manual_seed(0)
    torch.save({'model': create_model(MODEL, None, num_classes=0).state_dict()}, tmp_path/'encoder.pth')
    out = tmp_path/'enc.json'
    for members in ([tmp_path/'encoder.pth'], [ck['scratch'], tmp_path/'encoder.pth']):
        assert_refused('at_eval', *members, '--model', MODEL, '--data', 'digits', '--output', out, code=1, absent=[out],
                       names=[str(tmp_path/'encoder.pth'), 'no trained classifier', 'chance', '--attention'], real=len(members) == 1)


def test_bad_checkpoints(ck):
    assert_refused('at_eval', ck['root']/'none.pth', names=['none.pth', 'not found'], code=1)
    assert_refused('at_eval', ck['root']/'prev', names=['prev', 'not a file'], code=1)
    assert_refused('at_eval', ck['trunc'], names=['trunc.pth'], code=1)
    assert_refused('at_eval', ck['plain'], names=['--model', 'plain.pth'], code=1)                  # no description
    assert_refused('at_eval', ck['plain'], '--model', MODEL, names=['--data'], code=1)              # no data recorded
    assert_refused('at_eval', ck['plain'], '--model', 'no_such_vit', names=['no_such_vit'], code=1)


@pytest.mark.parametrize('other, names', [('mnist', ['different images', 'mnist5k']), ('wide', ['number of classes', '12']),
                                          ('letters', ['class names'])])
def test_mismatched_ensemble(ck, other, names):
    "Members must agree on their evaluation images and classes; refused before evaluating, nothing written."
    out = ck['root']/'ens.json'
    assert_refused('at_eval', ck['scratch'], ck[other], '--output', out, names=names, code=1, absent=[out])


# ---- at_demo: output folder and flags (tests/test_demo.py covers --teacher, --methods, --data, --epochs, --n_labelled 5,
# ---- --depth 3, --model, --workers and an --output_dir that is a file)

def test_demo_output_dir_of_an_earlier_run(tmp_path):
    prev = tmp_path/'runs'/'demo'; (prev/'students').mkdir(parents=True)
    (prev/'results.json').write_text('{"earlier": "result"}\n'); (prev/'students'/'copy_seed0.pth').write_bytes(b'weights')
    assert_refused('at_demo', '--output_dir', prev, names=['--output_dir', 'not empty'], code=1, watch=[tmp_path/'runs'], real=True)


def test_demo_output_dir_cannot_be_made(tmp_path):
    (tmp_path/'file').write_text('x')
    assert_refused('at_demo', '--output_dir', tmp_path/'file'/'demo', names=['--output_dir', 'is a file'], code=1, watch=[tmp_path])
    assert_refused('at_demo', '--output_dir', '/sys/at_demo_out', names=['--output_dir', 'cannot write'], code=1, absent=['/sys/at_demo_out'])


@pytest.mark.parametrize('args, names', [
    (['--batch_size', '0'], ['--batch_size']), (['--pretrain_epochs', '0'], ['--pretrain_epochs']),
    (['--n_labelled', '0'], ['--n_labelled']), (['--seeds', '1', '1'], ['--seeds']),
    (['--holdout', '-5'], ['--holdout']), (['--holdout', '5000'], ['--holdout']),
    (['--lr_copy', '0'], ['--lr_copy']), (['--lr_distill=-0.001'], ['--lr_distill']),
    (['--layer_decay_finetune', '0'], ['--layer_decay_finetune']), (['--layer_decay_scratch', '1.5'], ['--layer_decay_scratch']),
    (['--drop_path', '1'], ['--drop_path']), (['--mask_ratio', '1'], ['--mask_ratio']), (['--atd_weight', '-1'], ['--atd_weight']),
    (['--end_layer_distill', '1'], ['--end_layer_distill']), (['--depth', '0'], ['--depth']), (['--embed_dim', '-8'], ['--embed_dim']),
])
def test_demo_bad_flags(tmp_path, args, names):
    "Refused before anything is trained or written: the output folder is never created."
    assert_refused('at_demo', '--data', 'digits', *args, '--output_dir', tmp_path/'o', names=names, code=1, absent=[tmp_path/'o'])


@pytest.mark.parametrize('args, names', [(['--seeds'], ['--seeds']), (['--epochs', 'x'], ['--epochs']), (['--methods'], ['--methods'])])
def test_demo_unparsable_flags(tmp_path, args, names):
    assert_refused('at_demo', *args, '--output_dir', tmp_path/'o', names=names, code=2, absent=[tmp_path/'o'], real=args == ['--epochs', 'x'])


def test_checkpoint_of_a_method_this_process_does_not_know(tmp_path):
    "A checkpoint whose method is not in the method table (registered in another process) is refused, never scored without the teacher it may need."
    import timm
    from attention_transfer.models import model_meta, save_timm_checkpoint
    from attention_transfer.methods import load_for_eval
    from attention_transfer.methods import TrainError
    m = timm.create_model('vit_nano_patch4_32', num_classes=10)
    save_timm_checkpoint(m, tmp_path/'model.pth', model_meta(m, 'copy2'))
    with pytest.raises(TrainError, match="method 'copy2', which is not in the method table"): load_for_eval(tmp_path/'model.pth')
    assert_refused('at_eval', tmp_path/'model.pth', code=1, names=[str(tmp_path/'model.pth'), "'copy2'"])


def test_input_size_against_an_own_loop_checkpoint(tmp_path):
    """A checkpoint of one's own training loop (timm's `CheckpointSaver` on a task, as the README's block saves it) records
    no data but its model's img_size: another --input_size is refused in one line, as for at_train's checkpoints."""
    import timm
    from timm.optim import create_optimizer_v2
    from timm.utils import CheckpointSaver
    from attention_transfer.methods import build_task
    torch.manual_seed(0); t = timm.create_model('vit_nano_patch4_32', num_classes=10)
    save_timm_checkpoint(t, tmp_path/'teacher.pth')
    task = build_task('distill', timm.create_model('vit_nano_patch4_32', num_classes=10),
                      create_teacher('vit_nano_patch4_32', tmp_path/'teacher.pth', num_classes=10))
    opt = create_optimizer_v2(task.get_trainable_module(), 'adamw', lr=1e-3)
    CheckpointSaver(task.get_trainable_module(), opt, checkpoint_dir=str(tmp_path), task=task).save_checkpoint(epoch=0)
    out = tmp_path/'eval.json'
    assert_refused('at_eval', tmp_path/'last.pth.tar', '--data', 'digits', '--input_size', '64', '--output', out, code=1,
                   absent=[out], names=['--input_size 64', str(tmp_path/'last.pth.tar'), '32px', 'drop the flag'])
