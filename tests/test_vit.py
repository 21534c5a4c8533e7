"Importing `attention_transfer.vit` registers its models in timm's registry (checked in a fresh interpreter)."
import subprocess, sys, torch, timm
import attention_transfer.vit as vit

NAMES = ['vit_nano_patch4_32', 'vit_pico_patch4_32', 'vit_pico_patch7_28']

def test_import_registers_without_warnings():
    code = ("import timm, attention_transfer.vit; "
            f"assert all(timm.is_model(n) for n in {NAMES!r}); "
            "print(timm.create_model('vit_pico_patch7_28').pretrained_cfg['input_size'])")
    r = subprocess.run([sys.executable, '-W', 'error::UserWarning', '-c', code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '(3, 28, 28)'

def test_registry_points_at_library():
    assert sorted(timm.list_models(module='vit')) == sorted(NAMES)
    for n in NAMES:
        assert timm.models.model_entrypoint(n) is getattr(vit, n)
        assert timm.models.get_pretrained_cfg(n).mean == vit.default_cfgs[n]['mean']

def test_checkpoint_roundtrip(tmp_path):
    src = timm.create_model('vit_nano_patch4_32', global_pool='avg', num_classes=3).eval()
    torch.save({'model': src.state_dict()}, tmp_path / 'ckpt.pth')   # MAE/DeiT-style wrapper
    dst = timm.create_model('vit_nano_patch4_32', global_pool='avg', num_classes=3,
                            checkpoint_path=tmp_path / 'ckpt.pth').eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
