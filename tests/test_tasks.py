"""The methods as timm `TrainingTask`s, driven the way timm's own `train.py` drives its tasks (EMA set up first, then
`prepare_distributed`, an optimizer over the trainable module, `task(input, target)['loss'].backward()`, `update_ema`,
and `get_eval_model()` for validation), and the project's `Trainer` running tasks it did not build."""
import os, pytest, torch, timm
from timm.optim import create_optimizer_v2
from timm.task import LogitDistillationTask
import attention_transfer.vit  # registers vit_nano_patch4_32
from attention_transfer.methods import METHODS, build_task, trained_model
from attention_transfer.train import Trainer

def tiny(): return timm.create_model('vit_nano_patch4_32', num_classes=10)

@pytest.mark.parametrize('name', sorted(METHODS))
def test_timm_loop_trains_every_method(name, one_process_group):
    torch.manual_seed(0)
    teacher = tiny().eval().requires_grad_(False)
    task = build_task(name, tiny(), teacher)
    student, frozen = trained_model(task), {k: v.clone() for k, v in teacher.state_dict().items()}
    before = {k: v.clone() for k, v in student.state_dict().items()}
    task.setup_ema(decay=0.5)
    task.prepare_distributed(device_ids=None, find_unused_parameters=True)
    assert isinstance(task.get_trainable_module(), torch.nn.parallel.DistributedDataParallel)
    opt = create_optimizer_v2(task.get_trainable_module(), 'adamw', lr=1e-3)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for step in range(2):
        task.train(); out = task(x, y)
        assert out['loss'].ndim == 0 and out['output'].shape == (4, 10)
        out['loss'].backward(); opt.step(); opt.zero_grad(); task.update_ema(step=step + 1)
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())  # the student learned
    assert all(torch.equal(frozen[k], v) for k, v in teacher.state_dict().items())     # the teacher did not
    task.eval()
    with torch.no_grad():
        for ema in (False, True): assert task.get_eval_model(ema=ema)(x).shape == (4, 10)

def test_trainer_runs_a_task_it_did_not_build():
    "timm's own `LogitDistillationTask`, made directly, trains in the project's `Trainer` (losses logged by their names)."
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    task = LogitDistillationTask(tiny(), tiny().eval(), torch.nn.CrossEntropyLoss(), verbose=False)
    tr = Trainer(task, dl, dl, epochs=1, lr=1e-3, device='cpu', callbacks=[], ema=0.9)
    rec, = tr.fit()
    assert tr.student is task.trainable_module and tr.step == 2
    assert {'task_loss', 'kd_loss', 'test_top1', 'ema_top1'} <= set(rec)
    assert abs(rec['train_loss'] - (rec['task_loss'] + rec['kd_loss'])) < 1e-4
