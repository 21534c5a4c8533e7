"""`at_train` with a student that lacks components of its teacher (arXiv 2605.07191): the `ArchitectureWarning` reaches
the user as one line on stdout, `at_train: warning: ...`, and nothing on stderr; without `--model` the student is the
teacher's exact architecture and nothing is said. A CLIP-style nano ViT is registered here, so the runs are forks of
this process (`tests/_bad_inputs.py`), which know it; Python's own warning filters, not the suites' `ignore::UserWarning`."""
import pytest, timm, torch
from timm.models import register_model
from attention_transfer.vit import vit_cfg, vit_nano_patch4_32
from _bad_inputs import run_forked

default_cfgs = {'vit_nano_clip_patch4_32': vit_cfg(32)}  # `register_model` reads the config from this module

@register_model
def vit_nano_clip_patch4_32(pretrained=False, **kwargs):
    "`vit_nano_patch4_32` with CLIP's components: a norm before the first block (no patch-embed bias), QuickGELU; and layer scale."
    return vit_nano_patch4_32(pretrained, **{**dict(pre_norm=True, act_layer='quick_gelu', init_values=1e-5), **kwargs})

FLAGS = ['--data', 'digits', '--mode', 'copy', '--epochs', 1, '--steps_per_epoch', 1, '--batch_size', 8, '--num_workers', 0,
         '--warmup_epochs', 0]
ENV = {'PYTHONWARNINGS': ''}  # Python's defaults: a UserWarning is shown


@pytest.fixture(scope='module')
def teacher(tmp_path_factory):
    "The CLIP-style teacher's weights, saved as an encoder (MAE's format)."
    p = tmp_path_factory.mktemp('arch')/'clip_teacher.pth'
    torch.manual_seed(0)
    torch.save({'model': timm.create_model('vit_nano_clip_patch4_32', num_classes=0).state_dict()}, p)
    return p


def _lines(text, start): return [l for l in text.splitlines() if l.startswith(start)]


def test_plain_student_warns_in_one_line(teacher, tmp_path):
    r = run_forked('at_train', *FLAGS, '--finetune', teacher, '--teacher', 'vit_nano_clip_patch4_32', '--model', 'vit_nano_patch4_32',
                   '--output_dir', tmp_path/'run', env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    warned = _lines(r.stdout, 'at_train: warning: ')
    assert len(warned) == 1, r.stdout
    for part in ('patch-embed bias', 'pre-norm', 'layer scale', 'activation (teacher QuickGELU, student GELU)', 'arXiv 2605.07191',
                 'at_train does so when --model is left out'):
        assert part in warned[0], warned[0]
    assert 'ArchitectureWarning' not in r.stdout + r.stderr and 'Traceback' not in r.stdout + r.stderr, r.stderr[-3000:]
    assert r.stderr == '', r.stderr[-3000:]


def test_default_student_is_the_teacher_and_silent(teacher, tmp_path):
    r = run_forked('at_train', *FLAGS, '--finetune', teacher, '--model', 'vit_nano_clip_patch4_32', '--output_dir', tmp_path/'run', env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _lines(r.stdout, 'at_train: warning: ') == [] and r.stderr == '', r.stdout + r.stderr[-3000:]
    meta = torch.load(tmp_path/'run'/'model.pth', weights_only=True)['meta']
    assert (meta['model'], meta['teacher']['model']) == ('vit_nano_clip_patch4_32', 'vit_nano_clip_patch4_32')
