"""Teachers by timm name (issue 21, item 1): `arch.tag`, `hf-hub:org/name` and `pretrained_cfg_overlay=dict(file=...)`
load through timm's own pretrained path, from a Hugging Face cache written here in the hub's layout, with
`HF_HUB_OFFLINE` set: no network. The checkpoint records the name, revision and SHA-256; resume and at_eval check them;
offline-and-uncached, an unknown tag, or neither a file nor a name are one line and exit 1, before any work.
The cache writer lives here (not in the library) so that each test fails on a main without the feature by behaviour."""
import hashlib, json, os, subprocess, sys
from dataclasses import replace
from pathlib import Path
import pytest, timm, torch, safetensors.torch
import huggingface_hub.constants as hf
from timm.models import register_model, build_model_with_cfg, generate_default_cfgs
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
import attention_transfer.vit  # noqa: F401  (registers vit_nano_patch4_32)
from attention_transfer.models import create_teacher, create_model, checkpoint_meta, ModelError
from attention_transfer.attention import attention_maps

# A tiny architecture with one pre-trained tag whose weights live on the (fake) hub, as timm registers its own.
default_cfgs = generate_default_cfgs({tag: dict(
    hf_hub_id=f'timm/{tag}', num_classes=0, input_size=(3, 32, 32), mean=(0.5,) * 3,
    std=(0.25,) * 3, crop_pct=1.0, interpolation='bicubic', first_conv='patch_embed.proj', classifier='head')
    for tag in ('vit_hubtest_patch4_32.test', 'vit_hubtest_patch4_32.mae')})

@register_model
def vit_hubtest_patch4_32(pretrained=False, **kw):
    args = dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.)
    return build_model_with_cfg(VisionTransformer, 'vit_hubtest_patch4_32', pretrained,
                                pretrained_filter_fn=checkpoint_filter_fn, **dict(args, **kw))

TINY = dict(embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32)  # a tiny ViT-B/16 "MAE"
DINO = dict(embed_dim=32, depth=2, num_heads=2, img_size=28)  # a tiny ViT-S/14 DINOv2 (registers, layer scale)
C1, C2 = 'a1' * 20, 'b2' * 20  # two commits of a repository


def put(cache:Path, repo:str, files:dict, commit:str=C1) -> Path:
    "Write `files` into `cache` as huggingface_hub lays out a download: blobs, a snapshot of links, refs/main."
    d = cache/f"models--{repo.replace('/', '--')}"
    snap = d/'snapshots'/commit
    for sub in ('refs', 'blobs', f'snapshots/{commit}'): (d/sub).mkdir(parents=True, exist_ok=True)
    (d/'refs'/'main').write_text(commit)
    for fn, data in files.items():
        blob = d/'blobs'/hashlib.sha256(data).hexdigest(); blob.write_bytes(data)
        (snap/fn).unlink(missing_ok=True); (snap/fn).symlink_to(Path('../..')/'blobs'/blob.name)
    return snap

def weights(name:str, seed:int, **kw) -> bytes:
    torch.manual_seed(seed)
    return safetensors.torch.save(timm.create_model(name, num_classes=0, **kw).state_dict())

def sha(p): return hashlib.sha256(Path(p).read_bytes()).hexdigest()


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp('hf')/'hub'
    put(root, 'timm/vit_base_patch16_224.mae', {'model.safetensors': weights('vit_base_patch16_224', 0, **TINY)})
    put(root, 'timm/vit_hubtest_patch4_32.test', {'model.safetensors': weights('vit_hubtest_patch4_32', 1)})
    cfg = dict(architecture='vit_nano_patch4_32', num_classes=0, model_args=dict(depth=1),
               pretrained_cfg=dict(input_size=[3, 32, 32], mean=[0.5] * 3, std=[0.5] * 3, crop_pct=0.95,
                                   interpolation='bilinear', classifier='head'))
    put(root, 'timm/vit_nano_patch4_32.test', {'model.safetensors': weights('vit_nano_patch4_32', 2, depth=1),
                                                'config.json': json.dumps(cfg).encode()})
    for pool in ('token', 'avg'):  # headless towers whose config.json declares their pooling (and no classifier)
        put(root, f'me/nano-{pool}', {'model.safetensors': weights('vit_nano_patch4_32', 3, global_pool=pool),
                                      'config.json': json.dumps(dict(cfg, model_args=dict(global_pool=pool))).encode()})
    put(root, 'timm/vit_hubtest_patch4_32.mae', {'model.safetensors': weights('vit_hubtest_patch4_32', 5)})
    put(root, 'timm/vit_small_patch14_dinov2.lvd142m', {'model.safetensors': weights('vit_small_patch14_dinov2', 4,
                                                                                         **DINO)})
    put(root, 'me/nano-mae', {'model.safetensors': weights('vit_nano_patch4_32', 6),  # MAE: the repository says so
                              'config.json': json.dumps(dict(cfg, model_args={})).encode()})
    return root

@pytest.fixture
def offline(cache, monkeypatch):
    "huggingface_hub as under HF_HUB_CACHE=cache HF_HUB_OFFLINE=1 (it reads both when imported)."
    monkeypatch.setattr(hf, 'HF_HUB_CACHE', str(cache)); monkeypatch.setattr(hf, 'HF_HUB_OFFLINE', True)
    return cache

def snapshot_file(cache, repo, commit=C1): return cache/f"models--{repo.replace('/', '--')}"/'snapshots'/commit/'model.safetensors'


# -- Python: create_teacher by name, hf-hub id, pretrained_cfg_overlay file

def test_create_teacher_by_tagged_name_loads_its_weights(offline):
    t = create_teacher('vit_base_patch16_224.mae', **TINY)  # on main: a random ViT, without a word
    f = snapshot_file(offline, 'timm/vit_base_patch16_224.mae')
    src = safetensors.torch.load_file(f)
    for k in ('patch_embed.proj.weight', 'blocks.1.attn.qkv.weight', 'pos_embed', 'cls_token'):
        assert torch.equal(t.state_dict()[k], src[k]), k
    ref = timm.create_model('vit_base_patch16_224.mae', pretrained=True, **TINY).eval()  # timm's own model
    x = torch.randn(2, 3, 32, 32)
    for a, b in zip(attention_maps(t, x), attention_maps(ref, x)): torch.testing.assert_close(a, b)
    assert t.at_pretrained['name'] == 'vit_base_patch16_224.mae'
    assert (t.at_pretrained['revision'], t.at_pretrained['sha256']) == (C1, sha(f))
    assert t.at_spec['name'] == 'vit_base_patch16_224' and not t.training
    # weights by name as the checkpoint of another architecture: that one is built (and told it does not fit)
    with pytest.raises(ModelError, match='vit_base_patch16_224.mae does not fit vit_nano_patch4_32: 6 shape mismatches'):
        create_teacher('vit_nano_patch4_32', 'vit_base_patch16_224.mae', **TINY)  # MLP ratio 2, not 4

def test_create_teacher_by_hf_hub_id_and_overlay_file(offline):
    t = create_teacher('hf-hub:timm/vit_nano_patch4_32.test')  # the repository's config.json: architecture, depth 1
    f = snapshot_file(offline, 'timm/vit_nano_patch4_32.test')
    assert t.at_spec['name'] == 'vit_nano_patch4_32' and len(t.blocks) == 1
    assert torch.equal(t.blocks[0].attn.qkv.weight, safetensors.torch.load_file(f)['blocks.0.attn.qkv.weight'])
    assert t.at_pretrained['revision'] == C1
    o = create_teacher('vit_base_patch16_224.mae', pretrained_cfg_overlay=dict(file=str(snapshot_file(
        offline, 'timm/vit_base_patch16_224.mae'))), **TINY)  # timm's own way to point at a local file
    assert torch.equal(o.blocks[0].attn.qkv.weight, create_teacher('vit_base_patch16_224.mae', **TINY).blocks[0].attn.qkv.weight)
    with pytest.raises(ModelError, match="close ones: vit_base_patch16_224.mae"):
        create_teacher('vit_base_patch16_224.maee', **TINY)

def test_hub_teacher_keeps_the_repository_pooling_and_no_head(offline):
    "config.json's global_pool and num_classes 0 hold, as in timm's own model; an asked pooling is applied, with a note."
    import warnings
    from attention_transfer.models import CheckpointNote
    x = torch.randn(2, 3, 32, 32)
    for pool in ('token', 'avg'):  # on main: token became avg-less token with a random 10-class head
        t = create_teacher(f'hf-hub:me/nano-{pool}')
        ref = timm.create_model(f'hf-hub:me/nano-{pool}', pretrained=True).eval()
        assert (t.global_pool, t.num_classes, ref.global_pool, ref.num_classes) == (pool, 0, pool, 0)
        torch.testing.assert_close(t(x), ref(x))  # the pooled features, shape (2, 32)
    with warnings.catch_warnings(record=True) as w:  # on main: 'token' kept without a word
        warnings.simplefilter('always')
        t = create_teacher('hf-hub:me/nano-token', global_pool='avg')
    assert t.global_pool == 'avg' and t.at_checkpoint['fresh'] == ['fc_norm.bias', 'fc_norm.weight']
    assert any("global_pool='avg' asked; the checkpoint has 'token' pooling" in str(m.message)
               for m in w if issubclass(m.category, CheckpointNote))
    # a headless file through timm's overlay, num_classes=0: loads as timm.create_model loads it (on main: refused)
    f = str(snapshot_file(offline, 'timm/vit_base_patch16_224.mae'))
    t = create_teacher('vit_base_patch16_224', pretrained_cfg_overlay=dict(file=f), num_classes=0, **TINY)
    ref = timm.create_model('vit_base_patch16_224', pretrained=True, pretrained_cfg_overlay=dict(file=f), num_classes=0,
                            **TINY).eval()
    assert t.num_classes == 0 and torch.equal(t.blocks[1].attn.qkv.weight, ref.blocks[1].attn.qkv.weight)


# -- at_train and at_eval by name

TRAIN = ['--data', 'digits', '--epochs', '2', '--stop_epoch', '1', '--steps_per_epoch', '1', '--batch_size', '8',
         '--num_workers', '0', '--warmup_epochs', '0', '--attn_probe', '0']

def cli(main, args, capsys):
    "Run a console script's main in this process: (exit status, stdout, stderr)."
    try: main([str(a) for a in args]); code = 0
    except SystemExit as e: code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err

def test_at_train_distill_by_name_records_the_teacher_and_resume_checks_it(offline, tmp_path, capsys):
    from attention_transfer.cli import main, resolve, _datasets, TrainConfig
    args = ['--model', 'vit_hubtest_patch4_32', '--mode', 'distill', '--finetune', 'vit_hubtest_patch4_32.test', *TRAIN]
    code, out, err = cli(main, args + ['--output_dir', tmp_path/'run'], capsys)
    assert code == 0, err
    f = snapshot_file(offline, 'timm/vit_hubtest_patch4_32.test')
    ck = torch.load(tmp_path/'run'/'checkpoint.pth', map_location='cpu', weights_only=True)
    assert ck['args']['finetune'] == 'vit_hubtest_patch4_32.test' and ck['args']['teacher_sha256'] == sha(f)
    t = ck['meta']['teacher']['pretrained']
    assert (t['name'], t['hf_hub_id'], t['revision'], t['sha256']) == ('vit_hubtest_patch4_32.test',
                                                                       'timm/vit_hubtest_patch4_32.test', C1, sha(f))
    assert t['data']['mean'] == [0.5] * 3 and 'file' not in t  # no machine path in the description
    # the teacher's pretrained_cfg set the pipeline: its mean and std (0.5, 0.25), not ImageNet's
    ds = _datasets(resolve(TrainConfig(model='vit_hubtest_patch4_32', mode='distill', data='digits',
                                       finetune='vit_hubtest_patch4_32.test', output_dir=str(tmp_path/'x'))))[1]
    norm = ds.transform.transforms[-1]
    assert norm.mean.tolist() == [0.5] * 3 and norm.std.tolist() == [0.25] * 3
    # at_eval: the recorded name, and --teacher NAME, compare attention with the teacher from the cache
    from attention_transfer.evaluate import main as at_eval
    for extra in ([], ['--teacher', 'vit_hubtest_patch4_32.test']):
        code, out, err = cli(at_eval, [tmp_path/'run'/'checkpoint.pth', '--attention', 8, '--num_workers', 0, *extra],
                             capsys)
        assert code == 0 and "attention vs the teacher's on 8 images" in out, err
    # the cache now holds other weights under the same name (a new revision): resume and at_eval say so, in one line
    put(offline, 'timm/vit_hubtest_patch4_32.test', {'model.safetensors': weights('vit_hubtest_patch4_32', 9)}, C2)
    code, out, err = cli(main, args + ['--output_dir', tmp_path/'run', '--resume', 'allow'], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and 'teacher weights sha256' in err, err
    code, out, err = cli(at_eval, [tmp_path/'run'/'checkpoint.pth', '--attention', 8, '--num_workers', 0], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and f'revision {C2}' in err, err

def test_at_train_by_hf_hub_id_takes_the_repository_data_settings(offline, tmp_path):
    from attention_transfer.cli import resolve, _datasets, TrainConfig
    c = resolve(TrainConfig(model='vit_nano_patch4_32', mode='finetune', finetune='hf-hub:timm/vit_nano_patch4_32.test',
                            data='digits', output_dir=str(tmp_path/'o')))
    train_ds, val_ds, nc, size = _datasets(c)
    assert size == 32 and val_ds.transform.transforms[-1].mean.tolist() == [0.5] * 3
    assert train_ds.transform.transforms[0].interpolation.value == 'bilinear'  # the repository's, not bicubic
    _, _, _, size = _datasets(replace(c, input_size=28))
    assert size == 28  # a flag overrides it

def test_at_train_student_takes_a_token_hub_teacher_pooling(offline, tmp_path, capsys):
    "A token-pooled repository: teacher and student pool by token, no pooling mismatch (on main: an avg student)."
    from attention_transfer.cli import main
    args = ['--model', 'vit_nano_patch4_32', '--mode', 'distill', '--finetune', 'hf-hub:me/nano-token', *TRAIN]
    import warnings
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        code, out, err = cli(main, args + ['--output_dir', tmp_path/'run'], capsys)
    assert code == 0, err
    assert not [m for m in w if 'differs from its teacher in pooling' in str(m.message)]
    assert 'differs from its teacher in pooling' not in out + err, out + err
    ck = torch.load(tmp_path/'run'/'checkpoint.pth', map_location='cpu', weights_only=True)
    assert ck['args']['global_pool'] == 'token' and ck['meta']['teacher']['model_args']['global_pool'] == 'token'
    assert ck['meta']['model_args']['global_pool'] == 'token'

def test_logit_kd_refuses_a_teacher_without_a_trained_head(offline, tmp_path, capsys):
    "logit_kd learns from the teacher's logits: a headless teacher's would be a random head's (on main: ran silently)."
    from attention_transfer.cli import main
    args = ['--model', 'vit_nano_patch4_32', '--mode', 'logit_kd', '--finetune', 'hf-hub:me/nano-avg', *TRAIN]
    code, out, err = cli(main, args + ['--output_dir', tmp_path/'kd'], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert 'at_train: error: --mode logit_kd needs a fine-tuned teacher: hf-hub:me/nano-avg has no classifier' in err
    assert not (tmp_path/'kd'/'checkpoint.pth').exists()
    args[3] = 'feature_kd'  # pooled features: no classifier needed
    code, out, err = cli(main, args + ['--output_dir', tmp_path/'fkd'], capsys)
    assert code == 0, err


# -- bad input: one line, exit 1, before any work

def test_unknown_tag_and_neither_file_nor_name_are_one_line(offline, tmp_path, capsys):
    from attention_transfer.cli import main
    base = ['--model', 'vit_base_patch16_224', '--mode', 'distill', *TRAIN, '--output_dir', tmp_path/'o']
    code, out, err = cli(main, base + ['--finetune', 'vit_base_patch16_224.maee'], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert '--finetune' in err and 'close ones: vit_base_patch16_224.mae' in err, err
    for missing in ('no_such_teacher.pth', 'vit_base_patch16_224.pth', 'vit_base_patch16_224.mae.pth'):  # files
        code, out, err = cli(main, base + ['--finetune', missing], capsys)
        assert code == 1 and len(err.strip().splitlines()) == 1, err
        assert f'checkpoint not found: {missing}' in err and 'timm pre-trained name' in err, err
    code, out, err = cli(main, [*base[:1], 'vit_base_patch16_224.mae', *base[2:], '--finetune',
                                'vit_base_patch16_224.mae'], capsys)  # a tag on --model: never a silent random model
    assert code == 1 and '--model vit_base_patch16_224.mae names pre-trained weights' in err, err
    assert not (tmp_path/'o').exists()

def test_offline_and_not_cached_is_one_line_from_the_console_script(tmp_path):
    "The real environment variables, in a new process: HF_HUB_OFFLINE=1 and an empty cache."
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(tmp_path/'empty'), HF_HOME=str(tmp_path/'home'))
    exe = Path(sys.executable).parent/'at_train'
    r = subprocess.run([str(exe), '--model', 'vit_base_patch16_224', '--mode', 'distill', '--finetune',
                        'vit_base_patch16_224.mae', '--data', 'digits', '--output_dir', str(tmp_path/'o')],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith('at_train: error: --finetune vit_base_patch16_224.mae: not in the Hugging Face cache')
    assert 'HF_HUB_OFFLINE' in r.stderr and 'hf download timm/vit_base_patch16_224.mae' in r.stderr
    assert not (tmp_path/'o').exists()


# -- headless weights by name that declare no pooling: timm's own (DINOv2: token); MAE and files: the paper's avg

def test_headless_teacher_by_name_pools_as_timm_builds_it(offline):
    "DINOv2 by name keeps its class token and final norm (on main: avg with a fresh fc_norm and a note)."
    import warnings
    from attention_transfer.models import CheckpointNote
    x = torch.randn(2, 3, 28, 28)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        t = create_teacher('vit_small_patch14_dinov2.lvd142m', **DINO)
    ref = timm.create_model('vit_small_patch14_dinov2.lvd142m', pretrained=True, **DINO).eval()  # timm's own model
    assert (t.global_pool, ref.global_pool, t.num_classes) == ('token', 'token', 0)
    assert (t.at_checkpoint['fresh'], t.at_checkpoint['notes']) == ([], [])
    assert not [m for m in w if issubclass(m.category, CheckpointNote)]
    torch.testing.assert_close(t(x), ref(x))  # the class token after the trained final norm
    for a, b in zip(attention_maps(t, x), attention_maps(ref, x)): torch.testing.assert_close(a, b)
    assert create_teacher('hf-hub:timm/vit_nano_patch4_32.test').global_pool == 'token'  # config.json: no pooling
    # MAE (by tag, by repository) and a file keep the paper's recipe: average pooling with a fresh fc_norm
    f = snapshot_file(offline, 'timm/vit_small_patch14_dinov2.lvd142m')
    for m in (create_teacher('vit_base_patch16_224.mae', **TINY), create_teacher('hf-hub:me/nano-mae'),
              create_teacher('vit_small_patch14_dinov2', f, **DINO)):
        assert (m.global_pool, m.at_checkpoint['fresh']) == ('avg', ['fc_norm.bias', 'fc_norm.weight'])


def test_at_train_headless_teacher_by_name_pools_as_timm(offline, tmp_path, capsys):
    "at_train: teacher and student pool by class token for a non-MAE name (on main: avg), by average for MAE."
    from attention_transfer.cli import main
    args = ['--model', 'vit_hubtest_patch4_32', '--mode', 'distill', *TRAIN]
    for tag, pool in (('test', 'token'), ('mae', 'avg')):
        code, out, err = cli(main, args + ['--finetune', f'vit_hubtest_patch4_32.{tag}', '--output_dir', tmp_path/tag],
                             capsys)
        assert code == 0, err
        ck = torch.load(tmp_path/tag/'checkpoint.pth', map_location='cpu', weights_only=True)
        assert (ck['args']['global_pool'], ck['meta']['teacher']['model_args']['global_pool']) == (pool, pool)
        assert ck['meta']['model_args']['global_pool'] == pool


# -- no HF_HUB_OFFLINE and no network: the cache without a request; else one prompt line, no retry chatter

@pytest.fixture
def no_network(cache, monkeypatch):
    "huggingface_hub online (HF_HUB_OFFLINE unset), its endpoint a local port that lists file requests and drops them."
    import socket, threading
    srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(64)
    hits = []
    def serve():
        while True:
            try: conn, _ = srv.accept()
            except OSError: return
            with conn:
                conn.settimeout(5)
                try: line = conn.recv(4096).split(b'\r\n')[0].decode()
                except OSError: line = '?'
                if '/resolve/' in line: hits.append(line)  # huggingface_hub's own telemetry (agent-harnesses) aside
    threading.Thread(target=serve, daemon=True).start()
    url = f'http://127.0.0.1:{srv.getsockname()[1]}'
    monkeypatch.setattr(hf, 'HF_HUB_CACHE', str(cache)); monkeypatch.setattr(hf, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(hf, 'ENDPOINT', url)
    monkeypatch.setattr(hf, 'HUGGINGFACE_CO_URL_TEMPLATE', url + '/{repo_id}/resolve/{revision}/{filename}')
    yield hits, url
    srv.close()

@pytest.fixture
def refused(cache, monkeypatch):
    "huggingface_hub online (HF_HUB_OFFLINE unset), its endpoint a local port that refuses connections: an offline machine."
    import socket
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); url = f'http://127.0.0.1:{s.getsockname()[1]}'
    monkeypatch.setattr(hf, 'HF_HUB_CACHE', str(cache)); monkeypatch.setattr(hf, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(hf, 'ENDPOINT', url)
    monkeypatch.setattr(hf, 'HUGGINGFACE_CO_URL_TEMPLATE', url + '/{repo_id}/resolve/{revision}/{filename}')
    return url

def test_cached_weights_load_without_a_request(no_network, caplog):
    "Cached weights and config.json load with no connection and no log line (on main: a request per file)."
    hits, _ = no_network
    caplog.set_level('DEBUG')
    t = create_teacher('vit_base_patch16_224.mae', **TINY)
    h = create_teacher('hf-hub:timm/vit_nano_patch4_32.test')
    assert t.at_pretrained['revision'] == h.at_pretrained['revision'] == C1
    assert hits == [] and not [r for r in caplog.records if r.name.startswith(('huggingface_hub', 'httpx'))]
    assert hf.HF_HUB_OFFLINE is False  # the scope is restored

def test_uncached_online_unreachable_is_one_prompt_line(refused, caplog):
    "Not cached and the Hub out of reach: no retries or log lines, HubError at once (on main: 23 s of retries, logged)."
    import logging, time
    from attention_transfer.hub import HubError, weights_file
    levels = [logging.getLogger(n).level for n in ('huggingface_hub', 'urllib3')]
    caplog.set_level('DEBUG')
    start = time.perf_counter()
    with pytest.raises(HubError) as e: weights_file('vit_base_patch16_224.dino')
    assert time.perf_counter() - start < 5, time.perf_counter() - start  # huggingface_hub's backoff: 1+2+4+8+8 s
    msg = str(e.value)
    assert '\n' not in msg and 'the Hugging Face Hub is out of reach' in msg, msg
    assert 'hf download timm/vit_base_patch16_224.dino' in msg, msg
    assert not [r for r in caplog.records if r.name.startswith(('huggingface_hub', 'urllib3', 'httpx'))]
    assert [logging.getLogger(n).level for n in ('huggingface_hub', 'urllib3')] == levels and hf.HF_HUB_OFFLINE is False

def test_uncached_online_unreachable_from_the_console_script(refused, tmp_path):
    "A new process, HF_HUB_OFFLINE unset, HF_ENDPOINT refusing: one line on stderr (on main: 11 lines of retries first)."
    url = refused
    env = {k: v for k, v in os.environ.items() if k not in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE')}
    env.update(HF_ENDPOINT=url, HF_HUB_CACHE=str(tmp_path/'empty'), HF_HOME=str(tmp_path/'home'))
    r = subprocess.run([str(Path(sys.executable).parent/'at_train'), '--model', 'vit_base_patch16_224', '--mode',
                        'distill', '--finetune', 'vit_base_patch16_224.mae', '--data', 'digits', '--output_dir',
                        str(tmp_path/'o')], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith('at_train: error: --finetune vit_base_patch16_224.mae: not in the Hugging Face cache')
    assert 'out of reach' in r.stderr and 'hf download timm/vit_base_patch16_224.mae' in r.stderr
    assert not (tmp_path/'o').exists()


# -- an hf-hub id whose weights are cached but whose config.json is not

def test_missing_config_json_is_named_with_its_fix(offline, tmp_path, capsys):
    "The message names config.json, the hf download command for it and the timm name (on main: 'not in the cache')."
    from attention_transfer.cli import main
    with pytest.raises(ModelError) as e: create_teacher('hf-hub:timm/vit_base_patch16_224.mae')
    msg = str(e.value)
    assert 'hf-hub:timm/vit_base_patch16_224.mae: its config.json is not in the Hugging Face cache' in msg, msg
    assert 'its weights are' in msg and '`hf download timm/vit_base_patch16_224.mae config.json`' in msg, msg
    assert 'the timm way, vit_base_patch16_224.mae (no config.json needed)' in msg, msg
    code, out, err = cli(main, ['--model', 'vit_base_patch16_224', '--mode', 'distill', '--finetune',
                                'hf-hub:timm/vit_base_patch16_224.mae', *TRAIN, '--output_dir', tmp_path/'o'], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and 'hf download timm/vit_base_patch16_224.mae config.json' in err
    assert not (tmp_path/'o').exists()
    with pytest.raises(ModelError, match=r'me/nano-token2: not in the Hugging Face cache .* `hf download me/nano-token2`'):
        create_teacher('hf-hub:me/nano-token2')  # nothing of it cached: the whole repository


# -- flags that disagree about the teacher: one line naming both flags and both values, before any work

def test_teacher_flags_that_disagree_name_both(offline, tmp_path, capsys):
    from attention_transfer.cli import main, resolve, TrainConfig
    base = ['--data', 'digits', '--epochs', '1', '--batch_size', '8', '--num_workers', '0']
    cases = [(['--model', 'vit_hubtest_patch4_32', '--mode', 'distill', '--finetune', 'vit_hubtest_patch4_32.test',
               '--teacher', 'vit_pico_patch4_32'],
              '--teacher vit_pico_patch4_32 and --finetune vit_hubtest_patch4_32.test disagree'),
             (['--model', 'vit_hubtest_patch4_32', '--mode', 'distill', '--finetune', 'vit_hubtest_patch4_32.test',
               '--attn_teacher', 'vit_base_patch16_224.mae'],
              '--attn_teacher vit_base_patch16_224.mae and --finetune vit_hubtest_patch4_32.test disagree'),
             (['--model', 'vit_pico_patch4_32', '--attn_teacher', 'vit_hubtest_patch4_32.test'],
              '--attn_teacher vit_hubtest_patch4_32.test and --model vit_pico_patch4_32 disagree')]
    for i, (args, says) in enumerate(cases):
        code, out, err = cli(main, args + base + ['--output_dir', tmp_path/str(i)], capsys)
        assert code == 1 and len(err.strip().splitlines()) == 1 and says in err, err
        assert not (tmp_path/str(i)).exists()
    # an architecture that holds the weights (the same tensors under another registry name) still runs, as before
    c = resolve(TrainConfig(model='vit_nano_patch4_32', mode='distill', finetune='vit_hubtest_patch4_32.test',
                            teacher='vit_nano_patch4_32', data='digits', output_dir=str(tmp_path/'ok')))
    assert (c.teacher, c.finetune) == ('vit_nano_patch4_32', 'vit_hubtest_patch4_32.test')
