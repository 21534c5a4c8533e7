"""Checkpoints whose metadata holds numpy values (issue 23, item 4): numpy scalars, dtypes and arrays load safely,
with weights-only unpickling, whether numpy 1 (`numpy.core.multiarray`) or numpy 2 (`numpy._core.multiarray`) wrote
them; a checkpoint that also holds something able to run code is still refused, in one line that names only that."""
import collections, os, zipfile
import numpy as np, pytest, timm, torch
import attention_transfer.vit  # noqa: F401  (registers vit_pico_patch4_32)
from attention_transfer.checkpoints import CheckpointError, _pickle_globals, _read, load_state_dict
from attention_transfer.models import create_model

VALUES = {'best_acc': np.float64(0.9), 'step': np.int64(7), 'improved': np.bool_(True), 'lr': np.float32(1e-3),
          'curve': np.linspace(0., 1., 5), 'ids': np.arange(4, dtype=np.int32), 'dtype': np.dtype('float16'),
          'kind': np.float64, 'names': np.array(['a', 'bc'])}


class Registry(collections.OrderedDict):
    "A class of the user's own: harmless here, but its module is code that unpickling would import and run."


class System:
    "Pickles as a call of os.system: what a malicious checkpoint holds."
    def __reduce__(self): return os.system, ('echo pwned',)


@pytest.fixture(scope='module')
def sd():
    torch.manual_seed(0)
    return timm.create_model('vit_pico_patch4_32', num_classes=3).state_dict()


def numpy1(src, dst):
    "`src`, a torch zip checkpoint, with its pickle naming numpy's modules as numpy 1 does (`numpy.core.multiarray`)."
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, 'w') as o:
        for i in z.infolist():
            b = z.read(i.filename)
            o.writestr(i, b.replace(b'numpy._core.', b'numpy.core.') if i.filename.endswith('data.pkl') else b)
    return dst


def same(a, b) -> bool:
    return type(a) is type(b) and (np.array_equal(a, b) and a.dtype == b.dtype if isinstance(a, np.ndarray) else a == b)


@pytest.mark.parametrize('names', ['numpy2', 'numpy1'])
def test_numpy_metadata_loads(tmp_path, sd, names):
    p = tmp_path/'ck.pth'; torch.save({'model': sd, **VALUES}, p)
    if names == 'numpy1':
        p = numpy1(p, tmp_path/'ck1.pth')
        assert 'numpy.core.multiarray.scalar' in _pickle_globals(p)[0] and b'numpy._core' not in zipfile.ZipFile(p).read('ck/data.pkl')
    ck = _read(p, 'cpu')
    for k, v in VALUES.items(): assert same(ck[k], v), (k, ck[k], v)
    assert load_state_dict(p).keys() == sd.keys()
    m = create_model('vit_pico_patch4_32', p)
    assert m.num_classes == 3 and torch.equal(m.state_dict()['head.weight'], sd['head.weight'])


@pytest.mark.parametrize('value', [np.float64(0.9), np.int64(3), np.bool_(False), np.arange(3.), np.arange(3), np.dtype('int8')],
                         ids=['float64', 'int64', 'bool', 'float_array', 'int_array', 'dtype'])
def test_each_numpy_value_alone(tmp_path, sd, value):
    "Each kind on its own (the globals it needs differ: a dtype needs no reconstructor, an array needs _reconstruct)."
    torch.save({'model': sd, 'meta': {'v': value}}, tmp_path/'ck.pth')
    assert same(_read(tmp_path/'ck.pth', 'cpu')['meta']['v'], value)


def refusal(p) -> str:
    with pytest.raises(CheckpointError) as e: load_state_dict(p)
    return str(e.value)


@pytest.mark.parametrize('bad, name', [(Registry(a=1), f'{__name__}.Registry'), (System(), f'{os.system.__module__}.system')],
                         ids=['own_class', 'os_system'])
def test_code_beside_numpy_is_refused(tmp_path, sd, bad, name):
    "The line names what could run code, and not the numpy values that could not."
    torch.save({'model': sd, 'best_acc': np.float64(0.9), 'curve': np.arange(3.), 'x': bad}, tmp_path/'ck.pth')
    for p in (tmp_path/'ck.pth', numpy1(tmp_path/'ck.pth', tmp_path/'ck1.pth')):
        m = refusal(p)
        assert m.startswith(f'refusing to load {p}: it holds {name}, which only unsafe unpickling can rebuild'), m
        assert 'numpy.' not in m.split(': ', 1)[1] and '\n' not in m and 'weights_only=False' in m, m


def test_object_array_is_refused(tmp_path, sd):
    "An object array may hold anything: its dtype is not allowed, and the line says what torch would not build."
    torch.save({'model': sd, 'x': np.array([1, 'a'], dtype=object)}, tmp_path/'ck.pth')
    m = refusal(tmp_path/'ck.pth')
    assert m.startswith(f"refusing to load {tmp_path/'ck.pth'}") and 'ObjectDType' in m and '\n' not in m, m
