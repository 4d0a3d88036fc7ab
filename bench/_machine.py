"""What the benchmark scripts record about the machine they ran on."""
import datetime
import json
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


def save_rows(path, threads, rows):
    """Writes a benchmark's rows as JSON, with the machine, thread count and date they were taken on."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump({"machine": cpu_name(), "threads": threads, "date": str(datetime.date.today()), "rows": rows}, f, indent=1)
