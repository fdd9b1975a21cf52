# Rewrites cuda/pyramid.cu for the host simulation (stub/sim.h): shared memory becomes the
# simulator's buffer, the sm_80 tensor-core fallbacks call the emulations, launches call
# sim_launch. Usage: patch.py cuda/pyramid.cu OUT.cc
import re, sys
s = open(sys.argv[1]).read()
def rep(a, b, count=None):
    global s
    n = s.count(a)
    assert n >= 1, a
    if count: assert n == count, (a, n)
    s = s.replace(a, b)
rep("extern __shared__ __align__(16) unsigned char shared_bytes[];", "unsigned char* shared_bytes = sim_shared;")
rep("""  (void)d, (void)a, (void)b0, (void)b1;
  __trap();  // the host sends only compute capability 8.0+ here""", "  sim_mma<T>(d, a, b0, b1);", 1)
rep("""  (void)row;
  r[0] = r[1] = r[2] = r[3] = 0;
  __trap();  // the host sends only compute capability 8.0+ here""", "  sim_ldmatrix<Transposed>(r, row);", 1)
s, n = re.subn(r"([\w:]+(?:<[^<>()]*>)?)<<<(.*?)>>>\((.*?)\);", r"sim_launch(\1, \2, \3);", s)
assert n >= 6, n
open(sys.argv[2], 'w').write(s)
