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

    for name in ("data", "dialogues", "replay", "conversations", "vision"):  # audio, align, instruct: step_recipe
        monkeypatch.setattr(build, f"step_{name}", step(name, did_work=True))
    monkeypatch.setattr(build, "step_recipe", lambda recipe: step(recipe, did_work=True)())
    monkeypatch.setattr(build, "step_package", step("package", did_work=True))
    assert build.main([]) == 0
    timings_path = tmp_path / "runs" / "timings.json"
    timings = json.loads(timings_path.read_text())
    assert list(timings) == ["data", "dialogues", "replay", "conversations", "vision", "audio", "align", "instruct",
                             "package"]

    timings_path.write_text(json.dumps({**timings, "vision": 804.0}))
    monkeypatch.setattr(build, "step_vision", step("vision", did_work=False))  # already done
    assert build.main([]) == 0
    assert json.loads(timings_path.read_text())["vision"] == 804.0
    assert ran.count("vision") == 2 and ran.count("starter-instruct") == 2


def test_replay_is_redone_when_its_settings_change(monkeypatch, tmp_path):
    from omniphi.starter import replay

    monkeypatch.setattr(build, "REPLAY", tmp_path / "replay")
    writes = []

    def fake_write(out, system_prompts, seed):  # what write_replay leaves behind, without the LLM
        writes.append(out)
        out.mkdir(parents=True, exist_ok=True)
        settings = replay.replay_settings(system_prompts=system_prompts, seed=seed)
        (out / "metadata.json").write_text(json.dumps({**settings, "chat": 40, "text": 24}))
        return {"chat": 40, "text": 24}

    monkeypatch.setattr(replay, "write_replay", fake_write)
    assert build.step_replay() is True
    assert build.step_replay() is False  # same settings: kept
    meta = tmp_path / "replay" / "metadata.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "text_samples": 240}))  # an older, bigger mix
    assert build.step_replay() is True and len(writes) == 2


def test_a_redone_step_discards_the_trained_outputs_made_from_it(monkeypatch, tmp_path):
    """New data (or new replay) must not be paired with a tower or LoRA trained on the old one:
    the outputs of the steps that read it are deleted and trained again, the others kept."""
    monkeypatch.chdir(build.REPO)
    monkeypatch.setattr(build, "WORK", tmp_path / "runs")
    found = {}

    def trained(name):
        def run(*args):
            found[name] = (build.WORK / name).exists()
            (build.WORK / name).mkdir(parents=True, exist_ok=True)
            return not found[name]
        return run

    for name in ("vision",):
        monkeypatch.setattr(build, f"step_{name}", trained(name))
    monkeypatch.setattr(build, "step_recipe", lambda recipe: trained(recipe.removeprefix("starter-"))())
    monkeypatch.setattr(build, "step_package", lambda install: True)
    for name, redo in (("data", False), ("dialogues", False), ("replay", False), ("conversations", False)):
        monkeypatch.setattr(build, f"step_{name}", lambda redo=redo: redo)
    build.main([])  # first build: everything trained
    build.main([])  # nothing redone: everything kept
    assert all(found.values())
    monkeypatch.setattr(build, "step_dialogues", lambda: True)  # new dialogue layout: only instruct is stale
    build.main([])
    assert found == {"vision": True, "audio": True, "align": True, "instruct": False}
    monkeypatch.setattr(build, "step_dialogues", lambda: False)
    build.main([])
    # new conversations (general speech for the audio steps, spoken questions): vision is kept
    monkeypatch.setattr(build, "step_conversations", lambda: True)
    build.main([])
    assert found == {"vision": True, "audio": False, "align": False, "instruct": False}
    monkeypatch.setattr(build, "step_conversations", lambda: False)
    monkeypatch.setattr(build, "step_data", lambda: True)  # new data: every trained step is stale
    build.main([])
    assert not any(found.values())
