"""What every launcher must do (Hydra's ``LauncherTestSuite``): subclass per backend, fill ``make_launcher``.

The runs are started with the fake worker (``tests/launch/fake_worker.py``), so the suite checks
the launcher and nothing else, in seconds: outcomes are values, a failing or killed run does not
stop the others, ``submit`` returns at once and ``cancel`` stops a run.
"""
from __future__ import annotations

import time

import pytest

from ablate.launch.base import Launcher, RunHandle, RunOutcome
from ablate.runs import Failure, Run, WorkRoot

TIMEOUT_S = 90


class LauncherContract:
    """Subclass as ``TestXLauncher(LauncherContract)`` and define :meth:`make_launcher`."""

    world_size = 1  # processes each run of this backend starts

    def make_launcher(self) -> Launcher:
        raise NotImplementedError

    # helpers ---------------------------------------------------------------------------------

    @pytest.fixture
    def make_runs(self, tmp_path, fake_worker):
        def make(*behaviours: dict) -> list[Run]:
            runs = []
            for index, behaviour in enumerate(behaviours):
                run = WorkRoot(tmp_path).run("contract", "smoke", f"v{index}", 0)
                fake_worker.set(run.work_dir, **behaviour)
                runs.append(run)
            return runs

        return make

    @staticmethod
    def wait(handles: list[RunHandle], timeout: float = TIMEOUT_S) -> list[RunOutcome]:
        deadline = time.time() + timeout
        outcomes: dict[int, RunOutcome] = {}
        while len(outcomes) < len(handles):
            assert time.time() < deadline, f"runs did not end within {timeout} s"
            for i, handle in enumerate(handles):
                if i not in outcomes and (outcome := handle.poll()) is not None:
                    outcomes[i] = outcome
            time.sleep(0.1)
        return [outcomes[i] for i in range(len(handles))]

    # the contract ----------------------------------------------------------------------------

    def test_a_finished_run_is_done_with_its_result(self, make_runs, fake_worker):
        launcher = self.make_launcher()
        (run,) = make_runs({"outcome": "done"})
        (outcome,) = self.wait(launcher.submit([run]))
        assert outcome.status == "done"
        assert outcome.result.miou_best == 12.5
        assert outcome.work_dir == run.work_dir
        starts = [c for c in fake_worker.calls(run.work_dir) if "end" not in c]
        assert sorted(c["rank"] for c in starts) == list(range(self.world_size))
        assert {c["world_size"] for c in starts} == {self.world_size}

    def test_a_failure_is_a_value_and_the_other_runs_go_on(self, make_runs):
        launcher = self.make_launcher()
        runs = make_runs({"outcome": "done"}, {"outcome": "fail"}, {"outcome": "done"})
        outcomes = self.wait(launcher.submit(runs))
        assert [o.status for o in outcomes] == ["done", "failed", "done"]
        assert outcomes[1].error == "ValueError at iteration 3: fake failure"
        assert (runs[1].work_dir / "failed.json").is_file()

    def test_a_killed_worker_is_recorded_as_failed(self, make_runs):
        launcher = self.make_launcher()
        (run,) = make_runs({"outcome": "kill"})
        (outcome,) = self.wait(launcher.submit([run]))
        assert outcome.status == "failed"
        failed = Failure.read(run.work_dir)
        assert failed.error == outcome.error
        assert outcome.error and "\n" not in outcome.error
        assert not (run.work_dir / "result.json").exists()

    def test_submit_returns_at_once(self, make_runs):
        launcher = self.make_launcher()
        (run,) = make_runs({"outcome": "done", "sleep": 1.5})
        start = time.time()
        handles = launcher.submit([run])
        assert time.time() - start < 1.5
        assert handles[0].poll() is None
        assert self.wait(handles)[0].status == "done"

    def test_cancel_stops_the_run(self, make_runs, fake_worker):
        launcher = self.make_launcher()
        (run,) = make_runs({"outcome": "done", "sleep": 60})
        (handle,) = launcher.submit([run])
        deadline = time.time() + TIMEOUT_S
        while len(fake_worker.calls(run.work_dir)) < self.world_size:  # every process has started
            assert time.time() < deadline
            time.sleep(0.1)
        handle.cancel()
        outcome = self.wait([handle], timeout=30)[0]
        assert outcome.status == "skipped"
        time.sleep(1)
        assert not any("end" in c for c in fake_worker.calls(run.work_dir))
        assert not (run.work_dir / "result.json").exists()

    def test_poll_keeps_answering_after_the_end(self, make_runs):
        launcher = self.make_launcher()
        (run,) = make_runs({"outcome": "done"})
        handles = launcher.submit([run])
        first = self.wait(handles)[0]
        assert handles[0].poll() == first
