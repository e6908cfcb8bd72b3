"""Where a system's CPU goes per request, for `run --profile`.

After a case's measured window, the harness runs the same load once more for
the same duration under `perf record -e cpu-clock` (sampling, so the measured
window's CPU figures are not inflated by it) and reads the samples back by
symbol. Each symbol's self time is turned into microseconds per request of that
window, and kernel symbols are summed into areas by name, so that two systems
doing the same job can be compared area by area: the TCP stack's work is the
same job for all of them, the event interface (io_uring or epoll) and the
system-call entry are each one's own choice.
"""

import re
import signal
import subprocess

FREQUENCY = 4999

# Kernel areas, first match wins: (area, regex on the symbol name).
AREAS = [
    ("io_uring", r"^(__)?io_|^io_uring|^tctx_task_work|^__do_sys_io_uring|^__x64_sys_io_uring"),
    ("epoll", r"^(__)?ep_|^do_epoll|^__x64_sys_epoll|^epoll_"),
    ("syscall entry/exit", r"^entry_SYSCALL|^do_syscall|^syscall_|^__x64_sys_|^x64_sys_call|^exit_to_user|^syscall_exit|^__rseq|^rseq"),
    ("copy to/from user", r"copy_user|^_copy_|^copyout|^copyin|^rep_movs|^memcpy|^__memcpy|^check_heap_object|^__check_object_size|^simple_copy_to_iter|^skb_copy_datagram|^_copy_to_iter|^_copy_from_iter"),
    ("wakeup/scheduler", r"wake|^__schedule|^schedule|sched|^finish_task_switch|^pick_next|^update_curr|^enqueue|^dequeue|^select_task_rq|^__switch_to|^psi_|^ttwu|^set_next_entity|^put_prev"),
    ("timers", r"hrtimer|timer|^ktime_|^clockevents|^tick_"),
    ("TCP/IP", r"^(__)?tcp|^(__)?ip|^(__)?inet|^(__)?sk_|^(__)?sock|^(__)?skb|^__kfree_skb|^kfree_skb|^(__)?netif|^(__)?dev_|^loopback|^(__)?napi|^net_rx|^process_backlog|^__netdev|^validate_xmit|^(__)?nf_|^bbr|^cubictcp|^minmax|^__release_sock|^release_sock|^lock_sock|^(__)?neigh|^dst_|^raw_local|^__local_bh|^do_softirq|^__do_softirq|^irq_exit|^__napi|^bpf_|^security_sock|^selinux|^apparmor|^__build_skb|^alloc_skb|^__alloc_skb|^kmalloc_reserve|^page_frag|^skb_|^__sk_"),
    ("memory", r"^kmem_cache|^kfree|^__kmalloc|^kmalloc|^__slab|^slab|^___slab|^__alloc_pages|^free_unref|^get_page_from_freelist|^__free_pages|^__mod_|^mod_memcg|^memcg|^__memcg|^obj_cgroup|^refill_obj|^rmqueue|^page_counter|^__rcu|^rcu"),
    ("files", r"^fget|^fput|^__fget|^__fput|^fdget|^__fdget|^fd_install"),
]
AREAS = [(name, re.compile(pattern)) for name, pattern in AREAS]

LINE = re.compile(r"^\s*([\d.]+)%\s+(\d+)\s+(\S+)\s+\[([k.])\]\s+(.+?)\s*$")


class Recording:
    """`perf record` on the system's processes until `stop`."""

    def __init__(self, pids, out):
        self.out = out
        self.proc = subprocess.Popen(
            ["perf", "record", "-e", "cpu-clock", "-F", str(FREQUENCY), "-o", str(out),
             "-p", ",".join(map(str, pids))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self, requests):
        """The profile of the window, per request of its `requests`."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        report = subprocess.run(
            ["perf", "report", "-i", str(self.out), "--stdio", "--no-children", "-F", "overhead,sample,dso,sym",
             "--sort", "dso,sym", "-q"],
            capture_output=True, text=True, check=True).stdout
        return summarise(report, requests)


def summarise(report, requests):
    symbols = []
    for line in report.splitlines():
        m = LINE.match(line)
        if m:
            symbols.append((int(m.group(2)), m.group(3), m.group(4) == "k", m.group(5)))
    if not symbols:
        raise RuntimeError("perf report gave no samples")
    us = lambda samples: samples / FREQUENCY / max(1, requests) * 1e6
    areas = {}
    user = 0
    dsos = {}
    for samples, dso, kernel, sym in symbols:
        if not kernel:
            user += samples
            dsos[dso] = dsos.get(dso, 0) + samples
            continue
        area = next((name for name, pattern in AREAS if pattern.search(sym)), "other kernel")
        areas[area] = areas.get(area, 0) + samples
    total = sum(s for s, _, _, _ in symbols)
    top = sorted(symbols, reverse=True)[:40]
    return {
        "us_per_req": us(total),
        "user_us_per_req": us(user),
        "kernel_us_per_req": us(total - user),
        "user_dsos_us_per_req": {k: us(v) for k, v in sorted(dsos.items(), key=lambda kv: -kv[1])},
        "kernel_areas_us_per_req": {k: us(v) for k, v in sorted(areas.items(), key=lambda kv: -kv[1])},
        "top_symbols": [{"us_per_req": round(us(s), 3), "dso": d, "kernel": k, "symbol": sym}
                        for s, d, k, sym in top],
    }


def markdown(results):
    """One table of areas per case: microseconds per request, system by system."""
    rows = [r for r in results if "profile" in r]
    if not rows:
        return ""
    lines = []
    for case in dict.fromkeys(r["case"] for r in rows):
        these = [r for r in rows if r["case"] == case]
        areas = list(dict.fromkeys(a for r in these for a in r["profile"]["kernel_areas_us_per_req"]))
        lines += ["", f"Profile, {case}: CPU us per request (perf record -e cpu-clock, a window of its own)", "",
                  "| area | " + " | ".join(r["system"] for r in these) + " |",
                  "|---|" + "---|" * len(these)]
        fmt = lambda v: f"{v:.2f}"
        lines.append("| total | " + " | ".join(fmt(r["profile"]["us_per_req"]) for r in these) + " |")
        lines.append("| user space | " + " | ".join(fmt(r["profile"]["user_us_per_req"]) for r in these) + " |")
        lines.append("| kernel | " + " | ".join(fmt(r["profile"]["kernel_us_per_req"]) for r in these) + " |")
        for area in areas:
            lines.append(f"| kernel: {area} | " + " | ".join(
                fmt(r["profile"]["kernel_areas_us_per_req"].get(area, 0.0)) for r in these) + " |")
    return "\n".join(lines)
