"""attention_transfer.data under a real torch.distributed process group (2 gloo processes on CPU):
build_loader picks up world size and rank by itself, the ranks' first batches together are the single-process
first batch of the same global size, and evaluation shards cover the test split exactly once."""
import os, socket
import torch, torch.distributed as dist, torch.multiprocessing as mp
from attention_transfer.data import build_dataset, build_loader


class Indexed(torch.utils.data.Dataset):
    "Wraps a dataset so that each item also returns its index."
    def __init__(self, ds): self.ds = ds
    def __len__(self): return len(self.ds)
    def __getitem__(self, i): x, y = self.ds[i]; return x, y, i


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        tr, _ = build_dataset('digits', True, 8, augment=False)
        te, _ = build_dataset('digits', False, 8)
        dl = build_loader(Indexed(tr), 16, train=True, seed=5)
        dl.set_epoch(1)
        x, y, idx = next(iter(dl))
        ev = [i for b in build_loader(Indexed(te), 50, train=False) for i in b[2].tolist()]
        got = [None] * world
        dist.all_gather_object(got, dict(first=idx.tolist(), x=x, n_batches=len(dl), eval=ev))
        if rank == 0: torch.save(got, out)
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_process(tmp_path):
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    out = tmp_path / 'got.pt'
    mp.spawn(_worker, args=(2, port, str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=False)
    tr, _ = build_dataset('digits', True, 8, augment=False)
    one = build_loader(Indexed(tr), 32, train=True, seed=5)
    one.set_epoch(1)
    x, y, idx = next(iter(one))
    both = got[0]['first'] + got[1]['first']
    assert sorted(both) == sorted(idx.tolist())                      # same images in the first global batch
    pos = {i: k for k, i in enumerate(idx.tolist())}
    xs = torch.cat([got[0]['x'], got[1]['x']])
    assert torch.equal(xs, x[[pos[i] for i in both]])                 # and the same pixels
    assert got[0]['n_batches'] == got[1]['n_batches'] == 1257 // 2 // 16
    ev = got[0]['eval'] + got[1]['eval']
    assert sorted(ev) == list(range(540))                            # every test image exactly once, no padding
