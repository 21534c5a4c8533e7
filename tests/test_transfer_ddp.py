"""Copy and distillation pairs train under DistributedDataParallel (one CPU process, gloo): the frozen teacher is ignored
by DDP, every student parameter is used, and the teacher stays in eval mode and unchanged."""
import copy, pytest, torch, torch.nn.functional as F, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from timm.models.vision_transformer import VisionTransformer
from attention_transfer.transfer import AttentionCopy
from attention_transfer.distill import AttentionDistill

def vit(seed, **kw):
    torch.manual_seed(seed)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=10, **kw)

@pytest.fixture(scope='module')
def pg(tmp_path_factory):
    dist.init_process_group('gloo', init_method=f"file://{tmp_path_factory.mktemp('pg')}/store", rank=0, world_size=1)
    yield
    dist.destroy_process_group()

@pytest.mark.parametrize('cls,target,kw', [(AttentionCopy, 'attn', {}), (AttentionCopy, 'q', dict(heads=[0, 1])),
                                          (AttentionDistill, 'attn', dict(end_layer=-1)), (AttentionDistill, 'v', {})])
def test_ddp_pair(pg, cls, target, kw):
    t, s = vit(0), vit(1, drop_path_rate=0.1)
    pair = cls(t, s, target=target, **kw)
    t0 = copy.deepcopy(t.state_dict())
    model = DDP(pair)                       # find_unused_parameters=False: every student parameter must get a gradient
    model.train()
    assert pair.student.training and not pair.teacher.training
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for _ in range(3):
        out = model(x)
        loss = F.cross_entropy(out[0], y) + 3.0 * out[1] if cls is AttentionDistill else F.cross_entropy(out, y)
        loss.backward(); opt.step(); opt.zero_grad()
    assert all(torch.equal(v, t.state_dict()[k]) for k, v in t0.items())
    model.eval()
    with torch.no_grad(): assert model(x).shape == (4, 10)
