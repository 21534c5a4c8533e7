"""torch 2.14.1 inductor (CPU): the FX graph cache ignores ATEN_CPU_CAPABILITY; an avx2 process reuses AVX512 code.

The cache key has config.cpp.simdlen (None in both runs) but not the vector ISA that pick_vec_isa() derives from
ATEN_CPU_CAPABILITY. The cached wrapper's C++ was generated for 16 float lanes (loops step 16, 16x16 buffers); the
avx2 process rebuilds it with -mavx2, where at::vec::Vectorized<float> has 8 lanes: half of each output is never
written (garbage or NaN), with no error. The other way round (cached under avx2, run under AVX512) the 8-lane loops
run 16-lane vectors past their buffers: heap corruption. Needs an AVX512 x86 CPU.
Run: python inductor_repro.py (about 2 minutes).
Workaround: one TORCHINDUCTOR_CACHE_DIR per ATEN_CPU_CAPABILITY (or per CPU), or TORCHINDUCTOR_FX_GRAPH_CACHE=0.
"""
import os, subprocess, sys, tempfile

CHILD = r"""
import torch
torch._dynamo.config.cache_size_limit = 8
x = torch.randn(64, 1024, generator=torch.Generator().manual_seed(0))
f = torch.compile(lambda t: (t.t() * 2 + 1).softmax(-1))     # a transpose and a softmax: vectorized loops
got, want = f(x), (x.t() * 2 + 1).softmax(-1)
hit = torch._dynamo.utils.counters['inductor']['fxgraph_cache_hit']
print(f"{torch.backends.cpu.get_cpu_capability():7} fx cache hits {hit}  max |compiled - eager| "
      f"{float((got - want).abs().nan_to_num(float('inf')).max()):.3g}  NaN {bool(got.isnan().any())}")
"""

def run(cache, cap=None):
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, OMP_NUM_THREADS='1')
    env.pop('ATEN_CPU_CAPABILITY', None)
    if cap: env['ATEN_CPU_CAPABILITY'] = cap
    out = subprocess.run([sys.executable, '-c', CHILD], env=env, capture_output=True, text=True)
    tail = out.stdout.strip() or out.stderr.strip().splitlines()[-1]
    print(f"ATEN_CPU_CAPABILITY={cap or '(unset)':8}", tail, f"(exit status {out.returncode})")

if __name__ == '__main__':
    import torch
    print('torch', torch.__version__, '| this CPU:', torch.backends.cpu.get_cpu_capability())
    with tempfile.TemporaryDirectory() as fresh: run(fresh, 'avx2')          # own cache: correct
    with tempfile.TemporaryDirectory() as shared:
        run(shared)            # unset: AVX512 code, written to the cache
        run(shared, 'avx2')    # same key, cache hit: AVX512 code built for AVX2 -> wrong numbers
    with tempfile.TemporaryDirectory() as shared:
        run(shared, 'avx2')    # AVX2 code, written to the cache
        run(shared)            # cache hit: AVX2 code built for AVX512 -> writes past its buffers
