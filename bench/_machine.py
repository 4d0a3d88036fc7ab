"""What the benchmark scripts record about the machine they ran on."""
import os
import platform


def cpu_name():
    """The CPU model and logical CPU count, from /proc/cpuinfo where there is one."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f", {os.cpu_count()} logical CPUs"
    except OSError:
        pass
    return platform.processor()
