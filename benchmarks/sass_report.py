"""The compiled-code report: what each CUDA kernel's sm_90 code says about its speed, read
without a GPU, and a static roofline for the benchmark shapes built from it.

    python benchmarks/sass_report.py            # the per-kernel table and the predicted H100 times
    python benchmarks/sass_report.py --json F   # the same as JSON

Every csrc/cuda/*.cu is compiled for sm_90 with the extension's flags (tests/cuda_on_cpu/resources.py
compiles and caches it); cuobjdump reads the cubin. Per kernel: registers, stack frame, spill bytes,
static shared memory, resident blocks per SM at its __launch_bounds__ block size, local-memory
instructions (LDL/STL: a non-zero stack is local memory even where ptxas reports no spill), CAS-loop
atomics (a shared atomic the hardware lacks, compiled into a compare-and-swap retry loop), the widths
of its global loads, and its main loop: the innermost loop with the most global-load bytes, its SASS
instructions and instructions per element. tests/test_compiled_code.py asserts the properties that
make memory speed possible.
"""
import argparse
import bisect
import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tools"))
from build_env import SHARED_RESERVED_PER_BLOCK, cuda_tool as tool  # noqa: E402

# H100 SXM (sm_90): what occupancy and the roofline are computed from.
SM_COUNT = 132
REGISTERS_PER_SM = 65536
WARPS_PER_SM = 64
BLOCKS_PER_SM = 32
SHARED_PER_SM = 228 * 1024
DRAM_BYTES_PER_S = 3.35e12
SCHEDULERS_PER_SM = 4
CLOCK_HZ = 1.755e9
LAUNCH_S = 2.5e-6  # one kernel launch or memset on the stream, eager (a captured graph pays less)


@dataclasses.dataclass
class Loop:
    instructions: int
    load_bytes: int  # global-load bytes a pass of the loop reads (per thread)
    elements: float  # elements a pass reads, from load_bytes and the element size


@dataclasses.dataclass
class KernelReport:
    name: str
    registers: int
    stack: int
    spills: int
    shared: int
    threads: int
    local_instructions: int
    cas_loops: int
    load_widths: list  # distinct global-load widths in bytes
    instructions: int
    min_blocks: int  # __launch_bounds__' minimum blocks per SM (.minnctapersm; 0 without one)
    loop: Loop = None

    @property
    def blocks_per_sm(self):
        """Resident blocks per SM at `threads` a block (registers, warps, blocks and shared memory)."""
        threads = self.threads or 1024
        warps = (threads + 31) // 32
        per_warp = ((max(self.registers, 1) * 32 + 255) // 256) * 256
        by_regs = (REGISTERS_PER_SM // per_warp) // warps
        by_warps = WARPS_PER_SM // warps
        # cuobjdump's SHARED already counts the block's reserved 1 KB where it uses shared memory;
        # a block without any still has the reserve.
        by_shared = SHARED_PER_SM // (self.shared if self.shared > 0 else SHARED_RESERVED_PER_BLOCK)
        return min(by_regs, by_warps, BLOCKS_PER_SM, by_shared)

    @property
    def per_element(self):
        return self.loop.instructions / self.loop.elements if self.loop and self.loop.elements else None


def element_size(name):
    if "c10::BFloat16" in name or "c10::Half" in name:
        return 2
    return 8 if "double" in name else 4


def load_width(opcode):
    """Bytes one LDG instruction moves per thread."""
    for suffix, width in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1), (".S8", 1)):
        if suffix in opcode:
            return width
    return 4


_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_.]+)\s*([^;]*);")


def parse_sass(text):
    """{mangled function: [(address, opcode, operands)]} from cuobjdump -sass."""
    functions, current = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            current = functions.setdefault(m.group(1), [])
            continue
        m = _INSTRUCTION.search(line)
        if m and current is not None:
            current.append((int(m.group(1), 16), m.group(3), m.group(4)))
    return functions


def parse_resources(text):
    """{mangled function: {REG, STACK, SHARED, LOCAL, ...}} from cuobjdump -res-usage."""
    out, current = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            current = m.group(1)
            continue
        if current and "REG:" in line:
            out[current] = {k: int(v) for k, v in re.findall(r"(\w+(?:\[\d+\])?):(\d+)", line)}
            current = None
    return out


def main_loop(instructions, elem):
    """The loop (a backward branch's span) whose own body, nested loops aside, loads the most bytes of
    the row (16-byte or element-wide global loads): its SASS instructions (all paths through it, nested loops included: an upper bound on what a
    pass executes) and the elements a pass loads."""
    loops = []
    for address, opcode, operands in instructions:
        if opcode.startswith("BRA") and not opcode.startswith("BRA.DIV"):
            m = re.search(r"0x([0-9a-f]+)", operands)
            if m and int(m.group(1), 16) <= address:
                loops.append((int(m.group(1), 16), address))
    addresses = [a for a, _, _ in instructions]  # increasing
    best = None
    for start, end in loops:
        first, last = bisect.bisect_left(addresses, start), bisect.bisect_right(addresses, end)
        in_nested = [False] * (last - first)
        for s, e in loops:
            if start <= s and e <= end and (s, e) != (start, end):
                for i in range(bisect.bisect_left(addresses, s), bisect.bisect_right(addresses, e)):
                    in_nested[i - first] = True
        own = [op for (_, op, _), nested in zip(instructions[first:last], in_nested) if not nested]
        # Row loads: 16-byte vectors or one element wide (histograms and parameters load other widths).
        load_bytes = sum(w for w in (load_width(op) for op in own if op.startswith("LDG")) if w in (16, elem))
        size = last - first
        if load_bytes and (best is None or (load_bytes, -size) > (best.load_bytes, -best.instructions)):
            best = Loop(size, load_bytes, load_bytes / elem)
    return best


def parse_min_blocks(ptx):
    """{mangled entry: .minnctapersm} from PTX (0 for an entry without one)."""
    out = {}
    for m in re.finditer(r"\.entry\s+(\w+)\s*\((.*?)\)\s*((?:\.\w+[^{]*)?)\{", ptx, re.S):
        n = re.search(r"\.minnctapersm\s+(\d+)", m.group(3))
        out[m.group(1)] = int(n.group(1)) if n else 0
    return out


def dump(cuobjdump, option, cubin):
    """cuobjdump's output for a cubin, kept beside it (the cubin's name holds its sources' digest)."""
    from cuda_on_cpu.build import write_whole
    kept = cubin.with_name(f"{cubin.name}{option}.txt")
    if not kept.exists():
        write_whole(kept, subprocess.run([cuobjdump, option, str(cubin)], check=True, capture_output=True,
                                         text=True).stdout)
    return kept.read_text()


def kernel_reports(csrc=None):
    """{kernel name: KernelReport} for every kernel of csrc/cuda, or None without nvcc/cuobjdump."""
    from cuda_on_cpu import resources
    compiled = resources.compile_all(csrc)
    cuobjdump = tool("cuobjdump")
    if compiled is None or cuobjdump is None:
        return None
    reports = {}
    for ptx_path, log_path, cubin in compiled.values():
        threads = resources.parse_ptx(ptx_path.read_text())
        min_blocks = parse_min_blocks(ptx_path.read_text())
        ptxas = resources.parse_ptxas(log_path.read_text())
        usage = parse_resources(dump(cuobjdump, "-res-usage", cubin))
        sass = parse_sass(dump(cuobjdump, "-sass", cubin))
        names = list(threads)
        for mangled, demangled in zip(names, resources._demangle(names)):
            name = resources._kernel_name(demangled)
            code = sass.get(mangled, [])
            use = usage.get(mangled, {})
            reports[name] = KernelReport(
                name=name, registers=use.get("REG", ptxas.get(mangled, (0, 0, 0))[0]), stack=use.get("STACK", 0),
                spills=ptxas.get(mangled, (0, 0, 0))[2], shared=use.get("SHARED", 0), threads=threads[mangled],
                local_instructions=sum(op.startswith(("LDL", "STL")) for _, op, _ in code),
                cas_loops=sum(op.startswith("ATOMS.CAS") or ".CAST" in op for _, op, _ in code),
                load_widths=sorted({load_width(op) for _, op, _ in code if op.startswith("LDG")}),
                instructions=len(code), min_blocks=min_blocks.get(mangled, 0), loop=main_loop(code, element_size(name)))
    return reports


# --- the static roofline ----------------------------------------------------------------------

def short(name):
    return name.replace("syncfree::", "").replace("(anonymous namespace)::", "").replace("c10::", "")


def predicted_seconds(bytes_read, warp_instructions, launches):
    """max(bandwidth bound, issue bound) plus the launches."""
    issue = warp_instructions / (SM_COUNT * SCHEDULERS_PER_SM * CLOCK_HZ)
    return max(bytes_read / DRAM_BYTES_PER_S, issue) + launches * LAUNCH_S


# The benchmark configurations: the passes over the row (kernel, full reads) and the launches
# (memsets included) of the napkin model: csrc/cuda/plans.h napkin_select for the warpers (candidates
# fitting the buffer), Note [Logprob stage on CUDA] for top-n, Note [Processing in the pass].
CONFIGS = {
    "temperature": ([("syncfree_sample_kernel<{T}, false, true, false>", 1)], 1),
    "top-k + top-p + min-p": ([("syncfree_select_pass_kernel<{T}, false>", 2),
                               ("syncfree_sample_kernel<{T}, false, true, false>", 1)], 6),
    "everything on": ([("syncfree_select_pass_kernel<{T}, true>", 2), ("syncfree_sample_kernel<{T}, false, true, true>", 1),
                       ("syncfree_top_pass_kernel<{T}>", 2)], 12),
}


def roofline(reports, vocab=128256):
    """Predicted H100 times for the benchmark shapes from the napkin model and each pass's SASS
    instructions per element (static: an upper bound, so the issue bound is pessimistic)."""
    by_short = {short(n): r for n, r in reports.items()}
    rows = []
    for config, (passes, launches) in CONFIGS.items():
        for dtype, size, name in (("bf16", 2, "BFloat16"), ("float", 4, "float")):
            for batch in (1, 64, 256):
                elements = batch * vocab
                reads = sum(n for _, n in passes)
                warp_instr = 0.0
                for kernel, n in passes:
                    r = by_short.get(kernel.format(T=name))
                    warp_instr += n * elements * (r.per_element if r and r.per_element else 0.0) / 32
                bandwidth = reads * elements * size / DRAM_BYTES_PER_S
                issue = warp_instr / (SM_COUNT * SCHEDULERS_PER_SM * CLOCK_HZ)
                rows.append(dict(config=config, dtype=dtype, batch=batch, vocab=vocab, reads=reads, launches=launches,
                                 bandwidth_us=bandwidth * 1e6, issue_us=issue * 1e6,
                                 us=predicted_seconds(reads * elements * size, warp_instr, launches) * 1e6,
                                 bound="bandwidth" if bandwidth >= issue else "issue"))
    return rows


def print_report(reports):
    print(f"{'kernel':70s} {'regs':>4s} {'stack':>5s} {'spill':>5s} {'smem':>6s} {'thr':>4s} {'blk/SM':>6s} {'plan':>4s} "
          f"{'LDL/STL':>7s} {'CAS':>4s} {'loads':>10s} {'loop':>5s} {'/elem':>6s}")
    for name, r in sorted(reports.items()):
        per = f"{r.per_element:6.2f}" if r.per_element else "     -"
        loop = f"{r.loop.instructions:5d}" if r.loop else "    -"
        print(f"{short(name)[:70]:70s} {r.registers:4d} {r.stack:5d} {r.spills:5d} {r.shared:6d} {r.threads:4d} "
              f"{r.blocks_per_sm:6d} {r.min_blocks or '-':>4} {r.local_instructions:7d} {r.cas_loops:4d} "
              f"{','.join(str(w) for w in r.load_widths):>10s} {loop} {per}")


def print_roofline(rows):
    print("\nPredicted H100 SXM times (static roofline, not measured): max(bytes / 3.35 TB/s, warp instructions /"
          " (132 SMs x 4 schedulers x 1.755 GHz)) + launches x 2.5 us;\ninstructions per element are the main loop's"
          " static count (every path through it), so the issue bound is an upper bound")
    print(f"{'config':24s} {'dtype':6s} {'B':>4s} {'V':>7s} {'reads':>5s} {'launch':>6s} {'DRAM us':>8s} "
          f"{'issue us':>8s} {'us':>8s}  bound")
    for r in rows:
        print(f"{r['config']:24s} {r['dtype']:6s} {r['batch']:4d} {r['vocab']:7d} {r['reads']:5d} {r['launches']:6d} "
              f"{r['bandwidth_us']:8.1f} {r['issue_us']:8.1f} {r['us']:8.1f}  {r['bound']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the report and the roofline here")
    args = parser.parse_args()
    reports = kernel_reports()
    if reports is None:
        sys.exit("sass_report: needs nvcc (CUDA_HOME) and cuobjdump (the toolkit's or triton's)")
    print_report(reports)
    rows = roofline(reports)
    print_roofline(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(kernels={n: dataclasses.asdict(r) | {"blocks_per_sm": r.blocks_per_sm}
                                    for n, r in reports.items()}, roofline=rows), f, indent=1)


if __name__ == "__main__":
    main()
