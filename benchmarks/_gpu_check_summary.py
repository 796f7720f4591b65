"""The closing summary of benchmarks/gpu_check.sh, read off the logs it wrote.

    python benchmarks/_gpu_check_summary.py OUT_DIR [BENCH_DIR]

Prints ptxas registers and spills per kernel (build.log), each pytest run's last line
(pytest.log), each sanitizer run's error counts and first reports (sanitizer.log) and the
benchmark tables (BENCH_DIR's table_*.txt); merges BENCH_DIR's results JSON files into
OUT_DIR/bench.json. Only the standard library: it runs even where the build failed.
"""
import json
import os
import re
import shutil
import subprocess
import sys

STEP_HEADER = re.compile(r"^== (\S+) \(")  # gpu_check.sh's line before each step's output


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return None


def sections(text):
    """{step name: its lines} from a log holding one or more gpu_check.sh steps."""
    out, name = {}, None
    for line in text.splitlines():
        m = STEP_HEADER.match(line)
        if m:
            name = m.group(1)
            out[name] = []
        elif name is not None:
            out[name].append(line)
    return out


# --- ptxas ----------------------------------------------------------------------------------

def demangle(names):
    """Short readable kernel names: c++filt where it exists, namespaces and parameters dropped."""
    readable = dict(zip(names, names))
    if names and shutil.which("c++filt"):
        try:
            done = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                                  timeout=20).stdout.splitlines()
            if len(done) == len(names):
                readable = dict(zip(names, done))
        except (OSError, subprocess.SubprocessError):
            pass
    short = {}
    for name, text in readable.items():
        text = re.sub(r"^void ", "", text)
        text = text.replace("(anonymous namespace)::", "").replace("syncfree::", "").replace("c10::", "")
        depth, cut = 0, len(text)
        for i, ch in enumerate(text):  # drop the parameter list: the first '(' outside <...>
            depth += ch == "<"
            depth -= ch == ">"
            if ch == "(" and depth == 0:
                cut = i
                break
        short[name] = text[:cut]
    return short


def ptxas_table(build_log):
    """One line per kernel: registers, spills, stack frame, shared memory."""
    kernels, props, current = {}, None, None
    for line in build_log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '(sm_\w+)'", line)
        if m:
            current = (m.group(1), m.group(2))
            kernels.setdefault(current, {})
            continue
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            props = m.group(1)
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current and props == current[0]:
            kernels[current].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
            continue
        m = re.search(r"Used (\d+) registers(.*)", line)
        if m and current:
            smem = re.search(r"(\d+) bytes smem", m.group(2))
            kernels[current].update(regs=int(m.group(1)), smem=int(smem.group(1)) if smem else 0)
    if not kernels:
        return ["  no ptxas report in build.log (objects reused, or the build did not reach nvcc)"]
    names = demangle(sorted({k[0] for k in kernels}))
    rows = sorted(kernels.items(), key=lambda kv: (names[kv[0][0]], kv[0][1]))
    width = max(len(names[k[0]]) for k, _ in rows)
    lines = [f"  {'kernel':<{width}}  arch    regs  spill st/ld  stack  smem"]
    for (name, arch), k in rows:
        lines.append(f"  {names[name]:<{width}}  {arch:<6} {k.get('regs', '?'):>5}  "
                     f"{k.get('spill_stores', '?'):>5}/{k.get('spill_loads', '?'):<5} {k.get('stack', '?'):>5}"
                     f"  {k.get('smem', '?'):>5}")
    spills = [names[n] for (n, _), k in kernels.items() if k.get("spill_stores") or k.get("spill_loads")]
    lines.append(f"  {len(kernels)} kernels; spills in: {', '.join(sorted(set(spills))) or 'none'}")
    return lines


# --- pytest ---------------------------------------------------------------------------------

def pytest_lines(log):
    lines = []
    for name, body in sections(log).items():
        body = [l for l in body if l.strip() and not l.startswith("== ")]
        timeout = next((l for l in body if re.match(r"^Timeout \(\d", l.strip()) or " Timeout (" in l), None)
        final = next((l for l in reversed(body) if re.search(r"\b(passed|failed|error|errors|skipped|deselected|"
                                                               r"no tests ran)\b.* in [\d.]+s", l)), None)
        if timeout is not None:
            started = [l for l in body if re.match(r"^tests/\S+::\S+", l)]
            hung = started[-1].split()[0] if started else "?"
            lines.append(f"  {name}: stopped by the per-test deadline in {hung}")
        elif final is not None:
            lines.append(f"  {name}: {final.strip('= ').strip()}")
        else:
            lines.append(f"  {name}: no pytest summary line; last line: {body[-1].strip() if body else '(empty)'}")
        failed = [l for l in body if l.startswith("FAILED ") or l.startswith("ERROR ")]
        lines += [f"    {l[:160]}" for l in failed[:5]]
    return lines or ["  no pytest run recorded"]


# --- sanitizers -----------------------------------------------------------------------------

def sanitizer_lines(log):
    lines = []
    for name, body in sections(log).items():
        errors = next((l for l in body if "ERROR SUMMARY" in l), None)
        race = next((l for l in body if "RACECHECK SUMMARY" in l), None)
        driver = next((l for l in body if l.startswith("sanitizer_driver:") and "checks" in l), None)
        counts = []
        if errors:
            counts.append(errors.replace("=========", "").strip())
        if race:
            counts.append(race.replace("=========", "").strip())
        counts.append(driver.split(": ", 1)[1] if driver else "the driver did not finish")
        lines.append(f"  {name}: " + "; ".join(counts))
        reports = [l for l in body if l.startswith("========= ") and not re.search(
            r"COMPUTE-SANITIZER|ERROR SUMMARY|RACECHECK SUMMARY|^=========\s+(at|by|Host Frame|Saved host)", l)]
        lines += [f"    {l[10:170]}" for l in reports[:6]]
        if not errors and not race:
            tail = [l for l in body if l.strip()][-3:]
            lines += [f"    {l[:160]}" for l in tail]
    return lines or ["  no sanitizer run recorded"]


# --- benchmarks -----------------------------------------------------------------------------

def blocks(text):
    return [b for b in re.split(r"\n\s*\n", text.strip()) if b.strip()]


def bench_lines(bench_dir, out_dir):
    lines, merged = [], {}
    # bench_sample's table: header, every method, per-shape summary, B=1 against an empty kernel;
    # bench_warpers': header, per-shape summary, per-configuration summary, every method;
    # bench_verify's: header, the table, the bar's verdict.
    for key, stem, picks in (("sample", "", (0, 2, 3)), ("warpers", "warpers_", (1, 2)), ("verify", "verify_", (1, 2))):
        device = next((d for d in ("cuda", "cpu") if bench_dir and
                       os.path.exists(os.path.join(bench_dir, f"table_{stem}{d}.txt"))), "cuda")
        table = read(os.path.join(bench_dir, f"table_{stem}{device}.txt")) if bench_dir else None
        results = read(os.path.join(bench_dir, f"results_{stem}{device}.json")) if bench_dir else None
        if results:
            try:
                merged[key] = json.loads(results)
            except ValueError:
                pass
        if not table:
            lines.append(f"  {key}: no results")
            continue
        parts = blocks(table)
        for i in picks:
            if i < len(parts):
                lines += ["  " + l for l in parts[i].splitlines()] + [""]
    if merged:
        with open(os.path.join(out_dir, "bench.json"), "w") as f:
            json.dump(merged, f, indent=1)
        lines.append(f"  (all rows and metadata: {os.path.join(out_dir, 'bench.json')})")
    return lines


def main(argv):
    out_dir = argv[1]
    bench_dir = argv[2] if len(argv) > 2 else None
    parts = [("ptxas registers and spills (build.log)", ptxas_table, "build.log"),
             ("pytest (last lines)", pytest_lines, "pytest.log"),
             ("compute-sanitizer", sanitizer_lines, "sanitizer.log")]
    for title, fn, name in parts:
        print(f"\n-- {title}")
        text = read(os.path.join(out_dir, name))
        print("\n".join(fn(text) if text else [f"  no {name}"]))
    print("\n-- benchmark")
    print("\n".join(bench_lines(bench_dir, out_dir)))
    demo = read(os.path.join(out_dir, "demo.log"))
    print("\n-- decode demo (examples/generate.py)")
    body = [l for l in (demo or "").splitlines() if l.strip() and not l.startswith("== ")]
    print("\n".join("  " + l for l in body[-8:]) if body else "  no demo.log")


if __name__ == "__main__":
    main(sys.argv)
