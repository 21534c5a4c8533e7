"Fixtures shared by the test files."
import getpass, os, socket, tempfile

# torch 2.14.1's inductor FX graph cache key leaves out the vector ISA that ATEN_CPU_CAPABILITY picks: a graph cached
# under AVX512 is rebuilt for AVX2 with half of each vector unwritten (garbage loss), and the reverse corrupts the heap
# (reproduced with torch alone; session 9's closing note). One cache per capability keeps
# `ATEN_CPU_CAPABILITY=avx2 pytest` honest on an AVX512 machine.
# Set before torch._inductor is imported: importing it fixes the cache directory.
if (_cap := os.environ.get('ATEN_CPU_CAPABILITY')) and 'TORCHINDUCTOR_CACHE_DIR' not in os.environ:
    _user = getpass.getuser()
    os.environ['TORCHINDUCTOR_CACHE_DIR'] = os.path.join(tempfile.gettempdir(), f'torchinductor_{_user}_{_cap}')

import pytest
import torch.distributed as dist


@pytest.fixture(scope='module')
def one_process_group():
    "A one-process gloo group, so that `prepare_distributed` wraps in a real DistributedDataParallel."
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=0, world_size=1)
    yield
    dist.destroy_process_group()
