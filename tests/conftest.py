"""Test session setup: the CPU thread policy, and without a CUDA device the Triton interpreter.

Both must come before torch and Triton load, hence at the top of this file, which pytest loads
before collecting the tests: ``import occ_fast`` sets ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP reads it
once, when torch loads it; idle threads that spin take a core from the other processes of a shared
machine) in ``os.environ``, so every subprocess a test starts inherits it too; ``threads.apply``
gives this process its share of the cores (``occ_fast.threads``). ``TRITON_INTERPRET`` must be set
before any Triton kernel module is imported.
"""

import contextlib
import os
from pathlib import Path

from occ_fast import threads

threads.set_wait_policy()  # before torch loads OpenMP (importing occ_fast did it already; said here)
import torch  # noqa: E402

threads.apply()
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from triton_interpreter import install  # noqa: E402

install()

import background  # noqa: E402
import pytest  # noqa: E402
import warm_python  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "background(job, early=False): the test asserts on a command its job runs early; an early job is"
        " queued before the others (a long one that others wait for) (tests/background.py)",
    )


def pytest_collection_modifyitems(items):
    """The modules whose tests wait for background jobs run last, in their order: the in-process
    tests run first, beside the jobs, and at the end both cores run what is left of the queue."""
    with_jobs = {item.module for item in items if item.get_closest_marker("background")}
    items[:] = [i for i in items if i.module not in with_jobs] + [i for i in items if i.module in with_jobs]


@pytest.fixture(scope="session", autouse=True)
def background_jobs(request, tmp_path_factory):
    """Start the warm interpreter (``tests/warm_python.py``), then queue the jobs of the selected
    tests, in the order they run; end what still runs at the end."""
    marks = [m.kwargs for item in request.session.items for m in item.iter_markers("background")]
    jobs = [m["job"] for m in marks if m.get("early")] + [m["job"] for m in marks if not m.get("early")]
    base = tmp_path_factory.getbasetemp()  # made here, before a job's directory is made beside a test's
    with warm_python.server(base):
        background.start(jobs, lambda name: tmp_path_factory.mktemp(name))
        yield
        background.stop()


@pytest.fixture
def killed_mid_write(monkeypatch):
    """A context in which ``Path.write_text`` writes half its text and the process is interrupted:
    what a kill in the middle of rewriting a file leaves. The context fails if nothing was written."""

    @contextlib.contextmanager
    def killed():
        write_text = Path.write_text

        def half_then_interrupted(self, text, *rest, **kwargs):
            write_text(self, text[: len(text) // 2], *rest, **kwargs)
            raise KeyboardInterrupt

        with monkeypatch.context() as patched:
            patched.setattr(Path, "write_text", half_then_interrupted)
            with pytest.raises(KeyboardInterrupt):
                yield

    return killed
