"""What the benchmarks share: the machine they ran on and the clock they read. How much of the machine a run had is
the share of CPU time that a virtual machine's host gave to other guests (steal time, from /proc/stat): on a shared
host it changes from minute to minute and slows each run by its own amount, so a ratio measured while it is high, or
while it differs between two runs, says little; the benchmarks print it beside each engine's figures.
"""
import pathlib
import platform
import time


def cpu_times() -> list[int] | None:
    """The machine's CPU time counters (/proc/stat: user, nice, system, idle, iowait, irq, softirq, steal), or None
    where there is no /proc."""
    try:
        return [int(x) for x in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None


def steal_share(before, after) -> float | None:
    """The share of all CPU time between two cpu_times() that the host took (None where unknown)."""
    if before is None or after is None:
        return None
    delta = [b - a for a, b in zip(before, after)]
    return delta[7] / max(1, sum(delta))


def percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.0f}%"


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), named with every figure: speeds do not carry across machines."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(fn, repeats: int, *args) -> list[float]:
    """Seconds of each of `repeats` calls fn(*args)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return times
