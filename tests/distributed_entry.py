"""``torchrun`` entry point of the multi-process tests: runs ``fuxi-linear ARGS`` (as ``python -m fuxi_linear``
would), then reports the threads the process still has, the way it is about to exit.

A process group must be gone before the interpreter shuts down: when its gloo threads ('pt_gloo_runloop',
'gloo_tcp_loop') outlive it, a finished run sometimes died at exit with "terminate called without an active
exception". The line ``rank R threads at exit: [...]`` lets a test check that none is left, every time rather than
when the race is lost (:func:`threads_at_exit` reads them back).
"""
import os
import re
import sys

from fuxi_linear.cli import main


def threads_at_exit(stderr: str) -> dict:
    """``{rank: [thread names]}`` from a torchrun job's stderr (robust to the ranks' lines running together)."""
    return {int(rank): names for rank, names in re.findall(r"rank (\d+) threads at exit: (\[[^\]]*\])", stderr)}


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
    sys.stderr.flush()
    # one write of the whole line: the ranks share stderr, and print's separate writes could interleave
    os.write(2, f"rank {os.environ.get('RANK')} threads at exit: {sorted(os_thread_names())}\n".encode())
    sys.exit(code)
