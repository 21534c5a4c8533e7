"Fixtures shared by the test files."
import socket
import pytest
import torch.distributed as dist


@pytest.fixture(scope='module')
def one_process_group():
    "A one-process gloo group, so that `prepare_distributed` wraps in a real DistributedDataParallel."
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=0, world_size=1)
    yield
    dist.destroy_process_group()
