"""The method table is open (issue 22, deliverable 3): a new transfer option is one entry in `methods.TRANSFER_OPTIONS`
and one field of `at_train`'s `TrainConfig`. Here a throwaway method with a new option is registered in the test, and
the option is followed from its flag through `resolve`'s checks, `build_task`, the checkpoint, a resume and
`load_for_eval`, with no other edit. A subclass of `TrainConfig` stands in for the field one would add to it; the
method's pair records the option in its `transfer_meta`, as `RelationDistill` records `relation_heads`."""
import dataclasses, pytest, timm, torch
import attention_transfer.vit  # noqa: F401  (registers vit_nano_patch4_32)
from attention_transfer.cli import TrainConfig, at_train, resume_keys
from attention_transfer.command import parse_config, run_command
from attention_transfer.methods import METHODS, TRANSFER_OPTIONS, _pair, load_for_eval, register_method
from attention_transfer.models import checkpoint_meta
from attention_transfer.transfer import AttentionCopy


class ScaledCopy(AttentionCopy):
    "An attention copy whose logits are multiplied by `logit_scale`: what the new option changes."
    def __init__(self, teacher, student, logit_scale:float=1., **kw):
        super().__init__(teacher, student, **kw); self.logit_scale = logit_scale
    def forward(self, x): return super().forward(x) * self.logit_scale
    def transfer_meta(self): return super().transfer_meta() | dict(logit_scale=self.logit_scale)


@dataclasses.dataclass
class ScaledConfig(TrainConfig):
    logit_scale:float|None=None # multiply the copy student's logits (the one new field)


@pytest.fixture
def table():
    "The new option and a method that takes it, in the table for one test only."
    TRANSFER_OPTIONS.append('logit_scale')
    register_method('scaled_copy', _pair(ScaledCopy), 'inference', ('end_layer', 'layers', 'logit_scale'))
    yield
    TRANSFER_OPTIONS.remove('logit_scale'); del METHODS['scaled_copy']


FLAGS = ['--model', 'vit_nano_patch4_32', '--data', 'digits', '--epochs', '2', '--steps_per_epoch', '2', '--batch_size', '8',
         '--num_workers', '0', '--warmup_epochs', '0', '--attn_probe', '0']


def train(*argv):
    "at_train's console script, with the new field in its config."
    return run_command(at_train, ScaledConfig, 'at_train', FLAGS + [str(a) for a in argv])


def test_a_new_option_flows_from_its_flag_to_the_checkpoint_and_back(table, tmp_path, capsys):
    torch.manual_seed(0)
    teacher, out = tmp_path/'teacher.pth', tmp_path/'run'
    torch.save({'model': timm.create_model('vit_nano_patch4_32', num_classes=10).state_dict()}, teacher)
    scaled = ['--mode', 'scaled_copy', '--finetune', teacher, '--layers', 1, '--output_dir', out]
    assert parse_config(ScaledConfig, ['--logit_scale', '2'], 'at_train').logit_scale == 2.  # the flag
    assert 'logit_scale' in resume_keys(ScaledConfig()) and 'logit_scale' not in resume_keys(TrainConfig())

    train(*scaled, '--logit_scale', 2, '--stop_epoch', 1)                       # build_task takes it
    ck = torch.load(out/'checkpoint.pth', weights_only=True)
    assert ck['args']['logit_scale'] == 2. and checkpoint_meta(out/'checkpoint.pth')['transfer']['logit_scale'] == 2.

    with pytest.raises(SystemExit) as e: train(*scaled, '--logit_scale', 3, '--resume', 'allow')   # another run
    err = capsys.readouterr().err
    assert e.value.code == 1 and 'is another run: it has --logit_scale 2.0' in err and 'asks for --logit_scale 3.0' in err, err
    train(*scaled, '--logit_scale', 2, '--resume', 'allow')                     # the same run continues to the end

    net, meta = load_for_eval(out/'model.pth')                                  # rebuilt with the recorded value
    assert (type(net).__name__, net.logit_scale, net.layers, meta['method']) == ('ScaledCopy', 2., [1], 'scaled_copy')
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(): torch.testing.assert_close(net(x), 2 * AttentionCopy(net.teacher, net.student, layers=[1]).eval()(x))

    with pytest.raises(SystemExit) as e:                                        # a method that does not take it
        train('--mode', 'copy', '--finetune', teacher, '--logit_scale', 2, '--output_dir', tmp_path/'x')
    err = capsys.readouterr().err
    assert e.value.code == 1 and '--logit_scale does not apply to --mode copy' in err and '--logit_scale' not in err.split('(')[1]
    assert not (tmp_path/'x').exists()
