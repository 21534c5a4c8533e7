"""The timm task contract (issue 21, item 2): every method of the table, driven by timm's own helpers the way timm's
`train.py` drives a task. `create_optimizer_v2` with layer decay, a step, `CheckpointSaver`, `resume_task_checkpoint`,
`setup_ema` and `load_task_ema_checkpoint`, `timm.create_model(checkpoint_path=...)` on the saved student, `compile`
and `prepare_distributed` behave for each method as for timm's own distillation tasks."""
from pathlib import Path
import pytest, torch, timm
from torch._dynamo.testing import CompileCounterWithBackend
from timm.optim import create_optimizer_v2
from timm.task import resume_task_checkpoint, load_task_ema_checkpoint
from timm.utils import CheckpointSaver, unwrap_model
import attention_transfer.vit  # registers vit_nano_patch4_32
from attention_transfer.methods import METHODS, TransferTask, build_task, trained_model
from attention_transfer.models import CheckpointError, create_teacher, file_sha256, save_timm_checkpoint
from attention_transfer.train import Trainer
from test_families import ARCHS, tiny as family_model

NAME, ALL = 'vit_nano_patch4_32', sorted(METHODS)
X, Y = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3])

def student(seed=1, **kw):
    torch.manual_seed(seed); return timm.create_model(NAME, num_classes=10, **kw)

PAIRS = [n for n in ALL if isinstance(build_task(n, student(), student(0)), TransferTask)]

@pytest.fixture(scope='module')
def teacher_file(tmp_path_factory):
    "A pre-trained teacher as a file, as `at_train --finetune` and timm's `--kd-model` checkpoints give it."
    path = tmp_path_factory.mktemp('teacher')/'teacher.pth'
    save_timm_checkpoint(student(0), path)
    return path

def task_for(name, teacher_file, seed=1, **kw):
    "The method's task on a fresh student (`seed`) and the frozen teacher read from `teacher_file`."
    return build_task(name, student(seed), create_teacher(NAME, teacher_file), **kw)

def timm_optimizer(task):
    "AdamW as timm's train.py makes it: over the trainable module, weight decay 0.05, layer decay 0.75."
    return create_optimizer_v2(task.get_trainable_module(), 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.75)

def step(task, opt) -> float:
    "One step of timm's train loop: forward, backward, optimizer step, EMA update."
    task.train(); out = task(X, Y); out['loss'].backward(); opt.step(); opt.zero_grad(); task.update_ema()
    return out['loss'].item()

def ema_student(task):
    "The EMA copy of the trained model."
    m = unwrap_model(task.get_trainable_module(ema=True))
    return getattr(m, 'student', m)

def same(a, b) -> bool: return a.keys() == b.keys() and all(torch.equal(v, b[k]) for k, v in a.items())

def save(task, opt, folder) -> Path:
    "The checkpoint timm's `CheckpointSaver` writes for the task after epoch 0 (`last.pth.tar`)."
    CheckpointSaver(task.get_trainable_module(), opt, checkpoint_dir=str(folder), task=task).save_checkpoint(epoch=0)
    return Path(folder)/'last.pth.tar'

def groups(opt) -> dict:
    return {id(p): (g['weight_decay'], g['lr_scale']) for g in opt.param_groups for p in g['params']}

@pytest.mark.parametrize('name', ALL)
def test_optimizer_groups_as_for_the_student_alone(name, teacher_file):
    "Each student parameter gets the weight decay and layer-decay lr scale it gets alone; the teacher gets no group."
    task = task_for(name, teacher_file)
    alone = groups(create_optimizer_v2(trained_model(task), 'adamw', weight_decay=0.05, layer_decay=0.75))
    assert groups(timm_optimizer(task)) == alone
    assert sorted(set(alone.values()))[:2] == [(0., 0.75 ** 3), (0., 0.75 ** 2)]   # embeddings, block 0 (of 2)

@pytest.mark.parametrize('name', ALL)
def test_checkpoint_state_with_and_without_ema(name, teacher_file):
    "As timm's base task: no EMA entries without EMA (so `CheckpointSaver` writes), and no EMA to load into."
    task = task_for(name, teacher_file)
    state = task.get_checkpoint_state(ema=True)
    assert state == {}
    with pytest.raises(RuntimeError, match='before setup_ema'):
        task.load_checkpoint_state(task.get_checkpoint_state()['state_dict'], ema=True)
    task.setup_ema(decay=0.5)
    assert same(task.get_checkpoint_state(ema=True)['state_dict_ema'], ema_student(task).state_dict())

@pytest.mark.parametrize('name', ALL)
def test_saver_writes_the_student_and_resume_is_exact(name, teacher_file, tmp_path):
    "`CheckpointSaver` writes the student's plain timm keys; `resume_task_checkpoint` continues bit-exactly."
    task = task_for(name, teacher_file); opt = timm_optimizer(task)
    step(task, opt)
    path = save(task, opt, tmp_path)
    ck = torch.load(path, map_location='cpu', weights_only=True)
    assert same(ck['state_dict'], trained_model(task).state_dict())   # the student alone
    assert same(timm.create_model(NAME, num_classes=10, checkpoint_path=str(path)).state_dict(), ck['state_dict'])
    fresh = task_for(name, teacher_file, seed=2); fresh_opt = timm_optimizer(fresh)
    assert resume_task_checkpoint(fresh, str(path), optimizer=fresh_opt, log_info=False) == 1
    assert step(fresh, fresh_opt) == step(task, opt)
    assert same(trained_model(fresh).state_dict(), trained_model(task).state_dict())

@pytest.mark.parametrize('name', ALL)
def test_ema_checkpoint_loads(name, teacher_file, tmp_path):
    "With EMA: the saver writes the EMA student's keys; `load_task_ema_checkpoint` and `timm.create_model` read them."
    task = task_for(name, teacher_file); task.setup_ema(decay=0.5); opt = timm_optimizer(task)
    step(task, opt); step(task, opt)
    path = save(task, opt, tmp_path)
    ema = ema_student(task).state_dict()
    assert same(torch.load(path, map_location='cpu', weights_only=True)['state_dict_ema'], ema)
    fresh = task_for(name, teacher_file, seed=2); fresh.setup_ema(decay=0.5)
    resume_task_checkpoint(fresh, str(path), log_info=False); load_task_ema_checkpoint(fresh, str(path))
    assert same(ema_student(fresh).state_dict(), ema)
    assert same(trained_model(fresh).state_dict(), trained_model(task).state_dict())
    assert same(timm.create_model(NAME, num_classes=10, checkpoint_path=str(path)).state_dict(), ema)  # timm: EMA

@pytest.mark.parametrize('name', PAIRS)
def test_teacher_recorded_by_reference(name, teacher_file, tmp_path):
    "The frozen teacher is not stored: the task state names its file and SHA-256, and resume checks them."
    task = task_for(name, teacher_file); opt = timm_optimizer(task)
    ck = torch.load(save(task, opt, tmp_path), map_location='cpu', weights_only=True)
    t = ck['task_state']['teacher']
    assert (t['model'], Path(t['abs_path']), t['sha256']) == (NAME, teacher_file.resolve(), file_sha256(teacher_file))
    assert not any(torch.is_tensor(v) for v in t.values())
    other = tmp_path/'other.pth'; save_timm_checkpoint(student(5), other)
    with pytest.raises(CheckpointError, match='SHA-256'):
        resume_task_checkpoint(task_for(name, other), str(tmp_path/'last.pth.tar'), log_info=False)

@pytest.mark.parametrize('name', PAIRS)
def test_a_whole_pairs_state_dict_still_loads(name, teacher_file, tmp_path):
    "A checkpoint holding the pair's `teacher.*`/`student.*` keys (what timm's saver wrote before) loads the student."
    task = task_for(name, teacher_file)
    torch.save({'state_dict': task.pair.state_dict(), 'epoch': 3, 'version': 2}, tmp_path/'pair.pth.tar')
    fresh = task_for(name, teacher_file, seed=2)
    assert resume_task_checkpoint(fresh, str(tmp_path/'pair.pth.tar'), log_info=False) == 4
    assert same(fresh.student.state_dict(), task.student.state_dict())

@pytest.mark.parametrize('name', ['copy', 'distill'])
def test_timm_helpers_read_a_trainer_checkpoint(name, teacher_file, tmp_path):
    "A checkpoint of the project's `Trainer` (at_train's): timm resumes it at the next epoch, student and EMA."
    task = task_for(name, teacher_file)
    tr = Trainer(task, [(X, Y)] * 2, epochs=2, lr=1e-3, ema=0.5, device='cpu', callbacks=[])
    tr.fit(stop_epoch=1); path = tr.save(tmp_path/'checkpoint.pth')
    fresh = task_for(name, teacher_file, seed=2); fresh.setup_ema(decay=0.5)
    assert resume_task_checkpoint(fresh, str(path), log_info=False) == tr.epoch == 1
    load_task_ema_checkpoint(fresh, str(path))
    assert same(trained_model(fresh).state_dict(), tr.student.state_dict())
    assert same(ema_student(fresh).state_dict(), tr.ema.module.state_dict())

@pytest.mark.parametrize('name,backend,kw', [('copy', 'aot_eager', {}), ('distill', 'aot_eager', {}),
                                             ('distill', 'inductor', dict(layers=[1]))])
def test_compile_trains_with_eager_loss_and_gradients(name, backend, kw, teacher_file):
    "`task.compile()`: one graph, and the loss and student gradients of eager (inductor: one transferred layer)."
    torch._dynamo.reset()
    eager, compiled = task_for(name, teacher_file, **kw), task_for(name, teacher_file, **kw)
    counter = CompileCounterWithBackend(backend)
    compiled.compile(backend=counter)
    losses = []
    for task in (eager, compiled):
        loss = task.train()(X, Y)['loss']; loss.backward(); losses.append(loss.detach())
    assert counter.frame_count == 1
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    for (k, a), b in zip(eager.student.named_parameters(), compiled.student.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=k)

def test_each_cpu_capability_compiles_into_its_own_inductor_cache():
    "torch 2.14.1 keys its FX graph cache without the ISA: ATEN_CPU_CAPABILITY=avx2 must not read AVX512 entries."
    import os, subprocess, sys
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    code = ("import sys; sys.path.insert(0, 'tests'); import conftest\n"
            "from torch._inductor.runtime.cache_dir_utils import cache_dir; print(cache_dir())")
    env = {k: v for k, v in os.environ.items() if k != 'TORCHINDUCTOR_CACHE_DIR'} | dict(ATEN_CPU_CAPABILITY='avx2')
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[1]).stdout.strip()
    assert out.endswith('_avx2') and out != default_cache_dir(), out

@pytest.mark.parametrize('family', sorted(ARCHS))
@pytest.mark.parametrize('name', ALL)
def test_prepare_distributed_trains_every_family(name, family, one_process_group):
    "`prepare_distributed()` as timm's train.py calls it (no `find_unused_parameters`): two steps train the student."
    arch, kw = ARCHS[family]
    teacher, s = family_model(arch, **kw).eval().requires_grad_(False), family_model(arch, seed=1, **kw)
    task = build_task(name, s, teacher)
    frozen, before = ({k: v.clone() for k, v in m.state_dict().items()} for m in (teacher, s))
    opt = timm_optimizer(task)
    task.prepare_distributed(device_ids=None)
    assert isinstance(task.get_trainable_module(), torch.nn.parallel.DistributedDataParallel)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    for _ in range(2):
        task.train(); out = task(x, y); out['loss'].backward(); opt.step(); opt.zero_grad()
    assert not same(s.state_dict(), before) and same(teacher.state_dict(), frozen)

def test_a_timm_saver_copy_checkpoint_is_evaluated_with_its_teacher(teacher_file, tmp_path):
    "A copy student saved by timm's `CheckpointSaver` records its method: `at_eval` rebuilds it with its teacher."
    from attention_transfer.methods import load_for_eval
    task = task_for('copy', teacher_file); step(task, timm_optimizer(task))
    path = save(task, timm_optimizer(task), tmp_path)
    assert torch.load(path, weights_only=True)['task_state']['method'] == 'copy'
    with torch.no_grad(): want = task.get_eval_model().eval()(X)
    for model in (None, NAME):   # with or without --model: the task state describes the student
        net, meta = load_for_eval(path, model)
        assert meta['method'] == 'copy' and net.teacher is not net.student
        with torch.no_grad(): assert torch.equal(net(X), want)   # not the student alone, as a plain ViT

def test_a_timm_saver_distill_checkpoint_is_a_plain_vit(teacher_file, tmp_path):
    "A distilled student saved by timm's `CheckpointSaver` is evaluated as the plain ViT it is, without --model."
    from attention_transfer.methods import load_for_eval
    task = task_for('distill', teacher_file); step(task, timm_optimizer(task))
    net, meta = load_for_eval(save(task, timm_optimizer(task), tmp_path))
    assert meta['method'] == 'distill' and type(net) is type(task.student)
    with torch.no_grad(): assert torch.equal(net(X), task.student.eval()(X))

def test_a_task_state_without_its_method_is_refused(teacher_file, tmp_path):
    "A task state that does not say its method (an older or hand-built task) may hold a copy student: one line, exit 1."
    import subprocess, sys   # at_eval in its own process: its exit must not end this module's process group
    task = task_for('copy', teacher_file)
    ck = {'state_dict': task.student.state_dict(), 'task_state': {'teacher': task.get_task_state()['teacher']}}
    torch.save(ck, tmp_path/'old.pth.tar')
    r = subprocess.run([sys.executable, '-c', 'from attention_transfer.evaluate import main; main()',
                        str(tmp_path/'old.pth.tar'), '--model', NAME, '--data', 'digits', '--num_workers', '0'],
                       capture_output=True, text=True, timeout=300)
    err = r.stderr.strip()
    assert r.returncode == 1 and len(err.splitlines()) == 1 and 'attention-copy student' in err, (r.stdout, err)
