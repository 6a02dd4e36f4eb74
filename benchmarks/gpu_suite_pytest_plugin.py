"""pytest plugin of the GPU suite's ``tests`` section (loaded with ``-p gpu_suite_pytest_plugin``).

Prints every collected test id on a line of its own (``GPU_SUITE_COLLECTED <id>``), so a run cut short by
the time limit still tells what it did not reach; with ``GPU_SUITE_FIRST_PER_FILE=1`` in the environment
it keeps only the first test of each file (the dry run), so collection and run share one process.
"""
import os

COLLECTED_PREFIX = "GPU_SUITE_COLLECTED "
FIRST_PER_FILE_ENV = "GPU_SUITE_FIRST_PER_FILE"


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        print(COLLECTED_PREFIX + item.nodeid, flush=True)
    if os.environ.get(FIRST_PER_FILE_ENV) == "1":
        kept, dropped, seen = [], [], set()
        for item in items:
            path = item.nodeid.split("::")[0]
            (dropped if path in seen else kept).append(item)
            seen.add(path)
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = kept
