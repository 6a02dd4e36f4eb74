"""``torchrun`` entry point of the multi-process tests: runs ``fuxi-linear ARGS`` (as ``python -m fuxi_linear``
would), then reports the threads the process still has, the way it is about to exit.

A process group must be gone before the interpreter shuts down: when its gloo threads ('pt_gloo_runloop',
'gloo_tcp_loop') outlive it, a finished run sometimes died at exit with "terminate called without an active
exception". The line ``threads at exit: [...]`` lets a test check that none is left, every time rather than
when the race is lost.
"""
import os
import sys

from fuxi_linear.cli import main


def os_thread_names() -> list:
    """Names of this process's OS threads (Linux; empty elsewhere)."""
    folder = f"/proc/{os.getpid()}/task"
    if not os.path.isdir(folder):
        return []
    names = []
    for task in os.listdir(folder):
        try:
            with open(os.path.join(folder, task, "comm")) as fh:
                names.append(fh.read().strip())
        except OSError:  # the thread ended meanwhile
            pass
    return names


if __name__ == "__main__":
    code = main(sys.argv[1:])
    print(f"rank {os.environ.get('RANK')} threads at exit: {sorted(os_thread_names())}", file=sys.stderr,
          flush=True)
    sys.exit(code)
