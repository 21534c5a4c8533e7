"""Padded batches for the padding tests (issue 23, item 2): q and k of images of different token counts padded to one
length, their attention masks in every form timm and its users give them, and a timm ViT that pads its own batch with
such a mask, as timm's NaFlex models do for images of different sizes."""
import torch
from timm.models.vision_transformer import VisionTransformer

# fill: what a masked entry holds; None: a bool mask (True: attend)
FILLS = {'bool': None, '-inf': float('-inf'), 'finfo.min': 'min', '-1e4': -1e4, '-1e9': -1e9}


def make_mask(valid:torch.Tensor, fill, key_only:bool=False, dtype=torch.float32) -> torch.Tensor:
    "The mask of a batch whose tokens `valid` (`b n` bool) are real: `b 1 n n` (padding hidden as key and query) or `b 1 1 n`."
    m = valid[:, None, None, :] if key_only else valid[:, None, :, None] & valid[:, None, None, :]
    if fill is None: return m
    return torch.zeros(m.shape, dtype=dtype).masked_fill(~m, torch.finfo(dtype).min if fill == 'min' else fill)


def pad(x:torch.Tensor, n:int, seed:int=0) -> torch.Tensor:
    "`x` `b h m d` padded with large random junk to `n` tokens: whatever padding holds must not matter."
    g = torch.Generator().manual_seed(seed)
    junk = torch.randn(*x.shape[:-2], n - x.shape[-2], x.shape[-1], generator=g, dtype=x.dtype) * 5
    return torch.cat([x, junk], -2)


def batch(xs:list, extra:int=0, seed:int=0) -> tuple:
    "Tensors `1 h m_i d` of several images padded to the longest plus `extra` and stacked; (batch, valid `b n`)."
    n = max(x.shape[-2] for x in xs) + extra
    valid = torch.stack([torch.arange(n) < x.shape[-2] for x in xs])
    return torch.cat([pad(x, n, seed + i) for i, x in enumerate(xs)]), valid


class PaddedViT(VisionTransformer):
    """A timm ViT that pads its batch as timm's NaFlex models do: image i keeps its first `keep[i]` tokens, the rest of
    the batch's longest sequence (plus `extra` tokens) is junk, hidden by an attention mask of `fill` (see FILLS)."""
    keep, extra, fill, key_only = None, 0, 'finfo.min', False

    def _valid(self, b:int):
        "`b N` bool of the real tokens, or None when the batch needs no padding."
        n = self.patch_embed.num_patches + self.num_prefix_tokens
        keep = torch.tensor(self.keep if self.keep is not None else [n] * b)
        if (keep == n).all() and not self.extra: return None
        return torch.arange(int(keep.max()) + self.extra) < keep[:, None]

    def _pos_embed(self, x):
        x = super()._pos_embed(x)
        valid = self._valid(len(x))
        if valid is None: return x
        n = valid.shape[1]
        x = torch.cat([x, x.new_zeros(len(x), max(0, n - x.shape[1]), x.shape[2])], 1)[:, :n]
        junk = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype) * 3
        return torch.where(valid[..., None], x, junk)

    def _mask(self, b:int):
        valid = self._valid(b)
        return None if valid is None else make_mask(valid, FILLS[self.fill], self.key_only)

    def forward_features(self, x, attn_mask=None, is_causal=False):
        return super().forward_features(x, attn_mask=self._mask(len(x)))

    def forward_intermediates(self, x, *args, attn_mask=None, **kwargs):
        return super().forward_intermediates(x, *args, attn_mask=self._mask(len(x)), **kwargs)


def padded_vit(seed:int=0, **kw) -> PaddedViT:
    "A small PaddedViT (img 32, patch 8: 17 tokens, 3 blocks, 4 heads) with weights large enough that attention matters."
    torch.manual_seed(seed)
    m = PaddedViT(**{**dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=5, global_pool='token'), **kw})
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.ndim > 1: p.normal_(0, 0.3)
    return m


def set_padding(models, keep=None, extra=0, fill='finfo.min', key_only=False):
    "Pad the batches of every model in `models` the same way."
    for m in models: m.keep, m.extra, m.fill, m.key_only = keep, extra, fill, key_only
