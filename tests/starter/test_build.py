"""`make starter`'s driver: finished steps are skipped and keep the time they took when they ran."""

import json
import time

from omniphi.starter import build


def test_skipped_steps_keep_their_recorded_time(monkeypatch, tmp_path):
    monkeypatch.chdir(build.REPO)  # main() insists on the repository root
    monkeypatch.setattr(build, "WORK", tmp_path / "runs")
    ran = []

    def step(name, did_work):
        def run(*args):
            ran.append(name)
            if not did_work:
                time.sleep(1.2)  # checking that a step is done can take a while (loading its output)
            return did_work
        return run

    for name in ("data", "replay", "vision"):
        monkeypatch.setattr(build, f"step_{name}", step(name, did_work=True))
    monkeypatch.setattr(build, "step_recipe", lambda recipe: step(recipe, did_work=True)())
    monkeypatch.setattr(build, "step_package", step("package", did_work=True))
    assert build.main([]) == 0
    timings_path = tmp_path / "runs" / "timings.json"
    timings = json.loads(timings_path.read_text())
    assert list(timings) == ["data", "replay", "vision", "align", "instruct", "package"]

    timings_path.write_text(json.dumps({**timings, "vision": 804.0}))
    monkeypatch.setattr(build, "step_vision", step("vision", did_work=False))  # already done
    assert build.main([]) == 0
    assert json.loads(timings_path.read_text())["vision"] == 804.0
    assert ran.count("vision") == 2 and ran.count("starter-instruct") == 2
