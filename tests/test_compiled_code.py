"""Speed read from the compiled code (benchmarks/sass_report.py): every CUDA kernel's sm_90 code
keeps the properties that make memory speed possible, checked without a GPU.

- no stack frame, no spill and no local-memory instruction (a stack frame is local memory even
  where ptxas reports no spill: an array indexed at run time);
- no compare-and-swap retry loop (a shared-memory atomic the hardware lacks; Note [64-bit sums in
  shared memory] in csrc/cuda/block_select.cuh);
- the resident blocks per SM that csrc/cuda/plans.h sizes each grid for (blocks_per_sm: two
  512-thread blocks without processing, one with it), held by __launch_bounds__ and met by the
  registers and shared memory;
- 16-byte loads in the variants that read aligned rows.

The checker itself can fail: a planted kernel with a run-time indexed array and a 64-bit shared
atomic is flagged here, and (in the mutants tier) the same two regressions planted in the real
kernels are.
"""
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import sass_report  # noqa: E402


@pytest.fixture(scope="module")
def reports():
    found = sass_report.kernel_reports()
    if found is None:
        pytest.skip("needs nvcc (a CUDA toolkit) and cuobjdump (the toolkit's or the triton wheel's)")
    return found


def planned_blocks(name):
    """What plans.h sizes a kernel's grid for, from its name (an independent reading of the rule)."""
    short = sass_report.short(name)
    args = [a.strip() for a in short[short.index("<") + 1:short.rindex(">")].split(",")] if "<" in short else []
    if short.startswith(("syncfree_sample_kernel", "syncfree_select_pass_kernel", "syncfree_select_and_sample_kernel")):
        return 1 if args[-1] == "true" else 2  # the last template argument is kProcess
    if short.startswith(("syncfree_top_pass_kernel", "syncfree_top_finish_kernel")):
        return 1  # the logprob stage reads processed values
    return None


def test_every_kernel_is_in_the_report(reports):
    names = {sass_report.short(n).split("<")[0] for n in reports}
    for kernel in ("syncfree_sample_kernel", "syncfree_select_pass_kernel", "syncfree_select_and_sample_kernel",
                   "syncfree_top_pass_kernel", "syncfree_top_finish_kernel", "syncfree_verify_positions_kernel",
                   "syncfree_verify_finish_kernel", "syncfree_shard_pass_kernel", "syncfree_build_exceptions_kernel"):
        assert kernel in names, f"{kernel} is missing from the compiled code"
    sample = [r for n, r in reports.items() if "syncfree_sample_kernel" in n]
    assert len(sample) == 18 and all(r.loop is not None for r in sample), "the sampling kernels' main loops"


def test_no_kernel_uses_local_memory(reports):
    bad = {sass_report.short(n): (r.stack, r.spills, r.local_instructions) for n, r in reports.items()
           if r.stack or r.spills or r.local_instructions}
    assert not bad, f"(stack bytes, spill bytes, LDL/STL) of kernels using local memory: {bad}"


def test_no_kernel_has_a_cas_loop(reports):
    bad = {sass_report.short(n): r.cas_loops for n, r in reports.items() if r.cas_loops}
    assert not bad, f"compare-and-swap loops: {bad}"


def test_occupancy_is_what_the_plans_assume(reports):
    checked = 0
    for name, r in reports.items():
        want = planned_blocks(name)
        if want is None:
            continue
        checked += 1
        assert r.min_blocks == want, f"{sass_report.short(name)}: __launch_bounds__ asks {r.min_blocks}, plan {want}"
        assert r.blocks_per_sm >= want, \
            f"{sass_report.short(name)}: {r.registers} registers, {r.shared} B shared: {r.blocks_per_sm} blocks/SM < {want}"
    assert checked >= 30


def test_occupancy_counts_the_reserved_shared_memory_once():
    """cuobjdump's SHARED includes the 1 KB a block reserves: half an SM's 228 KB, reserve included,
    leaves room for two blocks; a block using none still takes the reserve."""
    def report(shared):
        return sass_report.KernelReport(name="k", registers=32, stack=0, spills=0, shared=shared, threads=64,
                                        local_instructions=0, cas_loops=0, load_widths=[], instructions=0,
                                        min_blocks=0)
    assert report(sass_report.SHARED_PER_SM // 2).blocks_per_sm == 2
    assert report(sass_report.SHARED_PER_SM // 2 + 1).blocks_per_sm == 1
    assert report(0).blocks_per_sm == sass_report.BLOCKS_PER_SM


def test_aligned_variants_load_16_bytes(reports):
    for name, r in reports.items():
        short = sass_report.short(name)
        aligned = (short.startswith("syncfree_sample_kernel") and short.split(",")[2].strip() == "true") or \
            short.startswith(("syncfree_select_pass_kernel", "syncfree_top_pass_kernel"))
        if aligned:
            assert 16 in r.load_widths, f"{short}: no 16-byte load ({r.load_widths})"


PLANTED = r"""
__global__ void __launch_bounds__(256) planted_kernel(const float* x, unsigned long long* out, int n) {
  __shared__ unsigned long long bins[64];
  float a[16];
  for (int i = 0; i < 16; ++i) a[i] = x[threadIdx.x * 16 + i];
  for (int width = n; width > 0; width /= 2)  // a run-time bound: the array goes to the stack
    for (int i = 0; i < width; ++i) a[i] += a[i + width];
  atomicAdd(&bins[threadIdx.x % 64], (unsigned long long)a[0]);  // no native 64-bit shared add
  __syncthreads();
  if (threadIdx.x < 64) out[threadIdx.x] = bins[threadIdx.x];
}
"""


def test_the_checker_flags_a_planted_kernel():
    """A kernel with a run-time indexed array and a 64-bit shared atomicAdd: the report's parsers
    must see its stack, its local-memory instructions and its CAS loop."""
    from build_env import find_cuda_home
    home, cuobjdump = find_cuda_home(), sass_report.tool("cuobjdump")
    if home is None or cuobjdump is None or shutil.which("c++filt") is None:
        pytest.skip("needs nvcc and cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        source, cubin = pathlib.Path(tmp, "planted.cu"), pathlib.Path(tmp, "planted.cubin")
        source.write_text(PLANTED)
        subprocess.run([f"{home}/bin/nvcc", "-arch=sm_90", "-cubin", "-O3", str(source), "-o", str(cubin)],
                       check=True, capture_output=True)
        usage = sass_report.parse_resources(subprocess.run([cuobjdump, "-res-usage", str(cubin)], check=True,
                                                           capture_output=True, text=True).stdout)
        sass = sass_report.parse_sass(subprocess.run([cuobjdump, "-sass", str(cubin)], check=True,
                                                     capture_output=True, text=True).stdout)
    (name, code), = sass.items()
    assert usage[name]["STACK"] > 0
    assert sum(op.startswith(("LDL", "STL")) for _, op, _ in code) > 0
    assert sum(op.startswith("ATOMS.CAS") or ".CAST" in op for _, op, _ in code) > 0
    assert re.search("planted_kernel", name)


# The two regressions, planted in the real kernels (a copy of csrc/ with one change): each must make
# the report's checks fail. A recompile each: the mutants tier.
REGRESSIONS = [
    ("rolled-tree-reduction", "core/race.h",  # the loops over the widths as they once were
     "  tree_sum_level<8>(a);\n  tree_sum_level<4>(a);\n  tree_sum_level<2>(a);\n  tree_sum_level<1>(a);\n  return a[0];",
     "  SF_UNROLL\n  for (int width = kGroup / 2; width > 0; width /= 2) {\n    SF_SIMD\n"
     "    for (int i = 0; i < width; ++i) a[i] = a[i] + a[i + width];\n  }\n  return a[0];",
     lambda r: r.stack > 0 or r.local_instructions > 0, "syncfree_sample_kernel<float, false, true, false>"),
    ("64-bit-shared-atomic", "cuda/warpers_cuda.cu",
     "if (mass > 0u) shared_add(sh.hist, first_digit(order_key(y)), mass);",
     "if (mass > 0u) atomicAdd(reinterpret_cast<unsigned long long*>(sh.hist.lo) + first_digit(order_key(y)) / 2,"
     " static_cast<unsigned long long>(mass));",
     lambda r: r.cas_loops > 0, "syncfree_select_pass_kernel<float, false>"),
]


@pytest.mark.mutants
@pytest.mark.parametrize("regression", REGRESSIONS, ids=lambda r: r[0])
def test_a_planted_regression_fails_the_checks(regression):
    _, file, old, new, flagged, kernel = regression
    if sass_report.tool("cuobjdump") is None:
        pytest.skip("needs cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        csrc = pathlib.Path(tmp, "csrc")
        shutil.copytree(ROOT / "csrc", csrc)
        text = (csrc / file).read_text()
        assert text.count(old) == 1, f"the regression's text occurs {text.count(old)} times in {file}"
        (csrc / file).write_text(text.replace(old, new))
        found = sass_report.kernel_reports(csrc)
    if found is None:
        pytest.skip("needs nvcc")
    assert flagged(next(r for n, r in found.items() if sass_report.short(n) == kernel))


@pytest.mark.parametrize("regression", REGRESSIONS, ids=lambda r: r[0])
def test_each_planted_regression_still_applies(regression):
    _, file, old, *_ = regression
    assert (ROOT / "csrc" / file).read_text().count(old) == 1


def test_the_installed_code_is_read_only_for_its_own_sources(tmp_path):
    """Where setup.py's stamp says the installed module was built from csrc/ (with sm_90 code and
    PTX), the report reads that code; a copy of csrc/ with one byte changed is compiled instead."""
    from cuda_on_cpu import resources
    cuobjdump = sass_report.tool("cuobjdump")
    shipped = resources._shipped_code(ROOT / "csrc", cuobjdump) if cuobjdump else {}
    if not shipped:
        pytest.skip("the installed module has no stamp for csrc/ as it is, or no sm_90 PTX (e.g. TORCH_CUDA_ARCH_LIST=9.0)")
    assert set(shipped) == {p.stem for p in (ROOT / "csrc" / "cuda").glob("*.cu")}
    copy = tmp_path / "csrc"
    shutil.copytree(ROOT / "csrc", copy)
    plans = copy / "cuda" / "plans.h"
    plans.write_text(plans.read_text() + "\n")
    assert resources._shipped_code(copy, cuobjdump) == {}
